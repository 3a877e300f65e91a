"""Answer extraction shared by the tasks: numbers, multiple-choice letters, final-answer statements and
code blocks.

Models state answers in many shapes ("The answer is (B).", "**B**", "B) Paris", "Answer: $18",
"\\boxed{18}"), and a refined answer often restates the question or discusses wrong options first, so
each extractor looks for an explicit final statement before it falls back to weaker evidence.
"""

from __future__ import annotations

import functools
import re
import string
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

# -- final-answer statements ----------------------------------------------------------------------

# "The answer is", "final answer:", "Answer =", "####", "\boxed{": the text after one of these is the answer.
_MARKER = re.compile(
    r"(?i:(?:final\s+|correct\s+|right\s+|best\s+)?answer(?:\s+(?:choice|option))?\s*"
    r"(?:is\s*:?|would\s+be|will\s+be|should\s+be|must\s+be|[:=]))|####|\\boxed\{"
)


def answer_statements(text: str) -> list[str]:
    """The text after each final-answer marker, up to the end of its line, last marker first."""
    out = []
    for m in _MARKER.finditer(text):
        rest = text[m.end() :]
        line = rest.split("\n", 1)[0]
        if not line.strip() and rest.strip():  # "Answer:\n18": the answer is on the next line
            line = rest.strip().split("\n", 1)[0]
        out.append(line)
    return out[::-1]


def clean_statement(statement: str) -> str:
    """An answer statement without surrounding markdown, quotes and the closing period."""
    s = statement.strip()
    previous = None
    while s != previous:
        previous = s
        s = s.strip().strip("*").strip("_").strip('"').strip()
        s = s[:-1] if s.endswith(".") else s
    return s


def boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{…}`` (or ``\\fbox{…}``), braces matched."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


# -- numbers --------------------------------------------------------------------------------------

# A number as written in prose: optional sign and currency, thousands separators, decimals.
# The minus sign must touch the number ("-5", "-$5"): in "16 - 3" it is an operator.
_NUMBER = re.compile(r"(?<![\w.])(-|−)?(?:[$€£]\s?)?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?![\d])")


def numbers(text: str) -> list[str]:
    """Every number in ``text``, normalized (no commas, currency or trailing zeros), in order."""
    out = []
    for m in _NUMBER.finditer(text):
        value = normalize_number(("-" if m.group(1) else "") + m.group(2))
        if value is not None:
            out.append(value)
    return out


def normalize_number(raw: str) -> str | None:
    """``"1,234.50"`` → ``"1234.5"``; ``"-$7"`` → ``"-7"``; None if it is not a number."""
    cleaned = raw.strip().replace(",", "").replace("$", "").replace("−", "-").rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(value.quantize(Decimal(1)))
    return format(value.normalize(), "f")


def final_number(text: str) -> str | None:
    """The number a solution ends on: the first number of the last answer statement that has one
    ("The answer is $1,200." → 1200), else the last number in the text."""
    inner = boxed(text)
    if inner is not None:
        found = numbers(inner)
        if found:
            return found[0]
    for statement in answer_statements(text):
        found = numbers(statement)
        if found:
            return found[0]
    found = numbers(text)
    return found[-1] if found else None


def same_number(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return Decimal(a) == Decimal(b)
    except InvalidOperation:
        return False


# -- multiple choice ------------------------------------------------------------------------------


def letters(n: int) -> str:
    return string.ascii_uppercase[:n]


def _normalize_text(s: str) -> str:
    s = s.lower().replace("’", "'")
    s = "".join(c if c.isalnum() or c.isspace() else " " for c in s)
    return " ".join(s.split())


def extract_choice(text: str, labels: str, options: list[str] | None = None) -> str | None:
    """The option a free-text answer picks, as one of ``labels`` (e.g. "ABCD"), or None.

    In order of the evidence's strength: an explicit final statement ("the answer is (B)", "Answer:
    **C**", the last one wins), ``\\boxed{B}``, "option C is correct", a bold letter, a leading "B)"
    or "(B)", a line that is just the letter, the text of exactly one option, the last "(B)" anywhere.
    """
    if not text or not labels:
        return None
    p = _choice_patterns(labels)
    for phase in (_stated, _boxed_letter, _verdict, _bold_letter, _leading_letter, _letter_line):
        got = phase(text, p)
        if got:
            return got
    if options:
        got = _match_option_text(text, labels, options)
        if got:
            return got
    return _last_parenthesized(text, p)


@dataclass(frozen=True)
class _ChoicePatterns:
    labels: str
    L: str  # the labels, escaped for a character class
    lower: str  # the same in lower case
    letter: str  # a letter as a choice (see _choice_patterns)
    named: str  # a letter after "option"/"choice" or before "is correct"


@functools.cache
def _choice_patterns(labels: str) -> _ChoicePatterns:
    L, lower = re.escape(labels), re.escape(labels.lower())
    # A letter as a choice: "(B)", "[B]", "**B**", a bare "C" ("C because…"), and a bare "A" only where it
    # cannot be the article ("A.", "A)", "A" at the end, "A - …"; not "A computer is…").
    others = re.escape(labels.replace("A", ""))
    letter = (
        rf"(?:\(\s*([{L}{lower}])\s*\)|\[\s*([{L}])\s*\]|\*\*\s*\(?([{L}])\)?\s*\*\*"
        + (rf"|([{others}])(?![\w'’-])" if others else "")
        + (r"|(A)(?=\s*$|\s*[).:,;\]*]|\s+[-–—(])" if "A" in labels else "")
        + ")"
    )
    # after "option"/"choice" or before "is correct" a bare letter is unambiguous
    named = rf"(?:\(\s*([{L}{lower}])\s*\)|\*\*\s*\(?([{L}])\)?\s*\*\*|([{L}])(?![\w'’-]))"
    return _ChoicePatterns(labels, L, lower, letter, named)


def _first_group(m: re.Match | None) -> str | None:
    """The letter a match caught (whichever alternative caught it), upper-cased."""
    if not m:
        return None
    for g in m.groups():
        if g:
            return g.upper()
    return None


def _stated(text: str, p: _ChoicePatterns) -> str | None:
    """1. An explicit statement ("answer is", "Answer:", "answer: option B"); the last one wins."""
    lead = r"[\s:*=\-]*(?:(?i:option|choice|letter)\s*)?[\s:*]*"
    for statement in answer_statements(text):
        got = _first_group(re.match(lead + p.letter, statement))
        if got:
            return got
        # the whole statement is a lower-case letter: "answer: b"
        m = re.fullmatch(rf"[\s:*]*\(?([{p.lower}])\)?\**\.?\s*", statement)
        if m:
            return m.group(1).upper()
    return None


def _boxed_letter(text: str, p: _ChoicePatterns) -> str | None:
    """2. ``\\boxed{B}``."""
    inner = boxed(text)
    if inner is None:
        return None
    m = re.fullmatch(rf"\s*(?:\\text\{{)?\(?([{p.L}])\)?\}}?\s*", inner)
    return m.group(1) if m else None


def _verdict(text: str, p: _ChoicePatterns) -> str | None:
    """3. "option C is correct", "(C) is the right answer", "I choose B", "I'd go with (D)"."""
    verdicts = list(
        re.finditer(
            rf"(?:(?i:option|choice)\s*{p.named}|\(\s*([{p.L}])\s*\))\s*(?i:is\s+(?:the\s+)?(?:correct|right|best|true))"
            rf"|(?i:I\s+(?:would\s+)?(?:choose|pick|select|go\s+with)|I'd\s+(?:choose|pick|go\s+with))\s*(?:(?i:option)\s*)?{p.named}",
            text,
        )
    )
    return _first_group(verdicts[-1]) if verdicts else None


def _bold_letter(text: str, p: _ChoicePatterns) -> str | None:
    """4. A bold letter: "**B**", "**(B)**", "**B) Paris**"."""
    bolds = list(re.finditer(rf"\*\*\s*\(?([{p.L}])(?:\)|\.|:|\*\*|\s)", text))
    return bolds[-1].group(1) if bolds else None


def _leading_letter(text: str, p: _ChoicePatterns) -> str | None:
    """5. The answer opens with the letter: "B", "(B)", "B) Paris", "B. Paris", "B: Paris"."""
    return _first_group(re.match(rf"\s*(?:\(([{p.L}])\)|([{p.L}])(?:[).:\]]|\s*$|\s*\n))", text))


def _letter_line(text: str, p: _ChoicePatterns) -> str | None:
    """6. A line that is only the letter (the last such line)."""
    lines = list(re.finditer(rf"(?m)^\s*\(?([{p.L}])\)?[.]?\s*$", text))
    return lines[-1].group(1) if lines else None


def _last_parenthesized(text: str, p: _ChoicePatterns) -> str | None:
    """8. The last parenthesized letter anywhere, unless the reply just lists every option."""
    parens = [m.group(1) for m in re.finditer(rf"\(([{p.L}])\)", text)]
    if parens and len(set(parens)) < len(p.labels):
        return parens[-1]
    return None


def _match_option_text(text: str, labels: str, options: list[str]) -> str | None:
    normalized = [_normalize_text(o) for o in options]
    # the answer statement names an option's text: "The answer is Paris."
    for statement in answer_statements(text):
        s = _normalize_text(statement)
        if not s:
            continue
        hits = [i for i, o in enumerate(normalized) if o and (s == o or s.startswith(o + " ") or o == s)]
        hits = _drop_contained(hits, normalized)
        if len(hits) == 1:
            return labels[hits[0]]
    whole = f" {_normalize_text(text)} "
    hits = [i for i, o in enumerate(normalized) if o and f" {o} " in whole]
    hits = _drop_contained(hits, normalized)
    if len(hits) == 1:
        return labels[hits[0]]
    return None


def _drop_contained(hits: list[int], normalized: list[str]) -> list[int]:
    """Of the options mentioned, drop those whose text is part of another mentioned option's text
    ("dog" inside "hot dog")."""
    return [i for i in hits if not any(j != i and normalized[i] in normalized[j] for j in hits)]


# -- code -----------------------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def code_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block; an unterminated last block runs to the end."""
    return [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]
