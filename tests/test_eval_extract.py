"""Answer extraction and scoring for every task, on hand-written model outputs (tricky ones included)."""

from __future__ import annotations

import pytest

from ptr.evaluate import get_task
from ptr.evaluate.extract import extract_choice, final_number, numbers
from ptr.evaluate.task import Doc, MultipleChoiceTask

OPTIONS = ["Paris", "London", "Berlin", "Madrid"]


@pytest.mark.parametrize(
    "output, expected",
    [
        ("The answer is (B).", "B"),
        ("The correct answer is B: London", "B"),
        ("Answer: **C**", "C"),
        ("**Answer:** (D) Madrid", "D"),
        ("I think the answer is option C.", "C"),
        ("B) London", "B"),
        ("(A) Paris is the capital.", "A"),
        ("After some thought: **B**", "B"),
        ("\\boxed{C}", "C"),
        ("Answer:\nB", "B"),
        ("answer: b", "B"),
        ("So the answer is (c).", "C"),  # the CommonsenseQA exemplars' lower-case letters
        ("Option D is correct.", "D"),
        ("I choose B", "B"),
        ("The answer is: **(C) Berlin**", "C"),
        ("The answer is not (A), it is (C).", "C"),
        ("(A) is wrong because of the river. (C) is right.", "C"),
        ("The answer is (B). Wait, actually the answer is (D).", "D"),  # the last statement wins
        ("The capital of France is Paris.", "A"),  # the option's text
        ("The answer is Berlin.", "C"),
        ("A good question. It must be Madrid.", "D"),  # the article "A" is not a choice
        # a real SmolLM2 reply: the statement's next line opens with the article "A"
        ("(C) Berlin\n\nThe correct answer is:\n\nA city with a long history, Berlin.", "C"),
        ("The answer is B - London", "B"),
        ("The answer is C because Berlin is the capital.", "C"),
        ("The answer is A.", "A"),
        # no answer at all: unextractable, and counted wrong
        ("Neither of them, I am not sure.", None),
        ("The options are (A) Paris, (B) London, (C) Berlin, (D) Madrid.", None),
        ("Both London and Paris are large cities.", None),
        ("", None),
    ],
)
def test_multiple_choice_extraction(output, expected):
    assert extract_choice(output, "ABCD", OPTIONS) == expected


def test_letters_outside_the_options_are_ignored():
    # a three-option ARC item: "D" is not a choice
    assert extract_choice("The answer is (D).", "ABC", ["x", "y", "z"]) is None
    assert extract_choice("The answer is (D). No: the answer is (B).", "ABC", ["x", "y", "z"]) == "B"


def test_option_text_prefers_the_longest_mentioned_option():
    assert extract_choice("It is a hot dog.", "AB", ["dog", "hot dog"]) == "B"


@pytest.mark.parametrize(
    "output, expected",
    [
        ("The answer is $1,200.", "1200"),
        ("So she makes 16 - 3 - 4 = 9 eggs * $2 = $18 per day.", "18"),
        ("#### 42", "42"),
        ("The answer is \\boxed{18}.", "18"),
        ("The answer is 18.00", "18"),
        ("The answer is 18. Question: how many are 5 and 6?", "18"),
        ("Answer: **72**", "72"),
        ("The answer is 10 apples, 3 more than 7.", "10"),
        ("The temperature drops to -5 degrees.", "-5"),
        ("It costs .5 dollars", "0.5"),
        ("no numbers here", None),
    ],
)
def test_final_number(output, expected):
    assert final_number(output) == expected


def test_numbers_treat_binary_minus_as_an_operator():
    assert numbers("16 - 3 - 4 = 9, -5 and -$7") == ["16", "3", "4", "9", "-5", "-7"]


def _mc_doc(gold_index=1):
    return MultipleChoiceTask.make_doc("q", "Which city is the capital of the UK?", OPTIONS, gold_index)


@pytest.mark.parametrize("name", ["arc_challenge", "arc_easy", "commonsenseqa", "mmlu", "hellaswag", "gpqa"])
def test_multiple_choice_tasks_score(name):
    task = get_task(name)()
    doc = _mc_doc()
    right, wrong, none = task.score_outputs(["**B**", "The answer is (C).", "I cannot tell."], [doc] * 3)
    assert (right.extracted, right.score, right.correct) == ("B", 1.0, True)
    assert (wrong.extracted, wrong.score) == ("C", 0.0)
    assert (none.extracted, none.score, none.correct) == (None, 0.0, False)


def test_winogrande_picks_by_option_name():
    task = get_task("winogrande")()
    doc = MultipleChoiceTask.make_doc(
        "w", "Sarah was a better surgeon than Maria so _ got the easy cases.", ["Sarah", "Maria"], 1
    )
    scored = task.score_outputs(
        ["The blank refers to Maria.", "So the answer is (A)", "Sarah or Maria?"], [doc] * 3
    )
    assert [s.extracted for s in scored] == ["B", "A", None]
    assert [s.score for s in scored] == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("name", ["gsm8k", "arith"])
def test_numeric_tasks_report_exact_and_flexible(name):
    task = get_task(name)()
    doc = Doc("g", "q", "18")
    outs = [
        "Janet sells 9 eggs at $2, so she makes $18.\nThe answer is $18.",
        "She makes 9 * 2 = 18 dollars. The answer is 20.",  # the flexible match counts the 18
        "She makes eighteen dollars.",
    ]
    exact, flexible_only, none = task.score_outputs(outs, [doc] * 3)
    assert (exact.score, exact.metrics["flexible_match"]) == (1.0, 1.0)
    assert (flexible_only.extracted, flexible_only.score, flexible_only.metrics["flexible_match"]) == (
        "20",
        0.0,
        1.0,
    )
    assert (none.extracted, none.score, none.metrics["flexible_match"]) == (None, 0.0, 0.0)


@pytest.mark.parametrize(
    "output, gold, right",
    [
        ("So x = 5.\nAnswer: 3\\sqrt{2}", "3\\sqrt{2}", True),
        ("Thus \\boxed{\\frac{1}{2}}.", "0.5", True),
        ("Answer: $\\left( 3, \\frac{\\pi}{2} \\right)$", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
        ("Answer: \\dfrac{3}{4}", "\\frac34", True),
        ("Answer: 10\\%", "10", True),
        ("Answer: x = 4", "4", True),
        ("**Answer:** 1,000.", "1000", True),
        ("Answer: 2", "3", False),
        ("I do not know.", "3", False),
    ],
)
def test_math_symbolic_equivalence(output, gold, right):
    for name in ("math", "math500"):
        (scored,) = get_task(name)().score_outputs([output], [Doc("m", "q", gold)])
        assert scored.correct is right, (name, output, scored.extracted)


def test_drop_em_and_f1_over_alternatives():
    task = get_task("drop")()
    doc = Doc("d", "q", ["Pakistanis and Filipinos", "Pakistani and Filipino"])
    outs = [
        "Let's think step by step\nThe answer is  **Pakistani and Filipino**.",
        "The answer is the Filipinos and Pakistanis",  # same words, other order: F1 1, EM 0
        "The answer is Pakistanis",
        "The answer is 45,000",
    ]
    full, reordered, partial, wrong = task.score_outputs(outs, [doc] * 4)
    assert (full.score, full.metrics["exact_match"], full.correct) == (1.0, 1.0, True)
    assert (reordered.score, reordered.metrics["exact_match"]) == (1.0, 0.0)
    assert 0 < partial.score < 1 and partial.metrics["exact_match"] == 0.0
    assert wrong.score == 0.0
    # a number answer must contain the number
    num = Doc("n", "q", ["50.6"])
    near, right = task.score_outputs(["The answer is 51 billion", "The answer is 50.6 billion."], [num] * 2)
    assert near.score == 0.0 and 0 < right.score < 1


def test_xsum_similarity_and_rouge():
    task = get_task("xsum")()
    ref = "Former Australia coach Wayne Bennett has been offered a role with England by the Rugby Football League."
    doc = Doc("x", "article", ref)
    outs = [
        "Summary: Wayne Bennett, the former Australia coach, has been offered a job with England by the RFL.",
        "Here is a one-sentence summary:\nThe price of wheat rose sharply in Kansas after a dry summer.",
        "",
    ]
    close, far, empty = task.score_outputs(outs, [doc] * 3)
    assert close.extracted.startswith("Wayne Bennett")  # the label is gone
    assert far.extracted.startswith("The price of wheat")  # the preamble line is gone
    assert close.score > far.score + 0.3
    assert close.metrics["rougeL"] > far.metrics["rougeL"]
    assert empty.score == 0.0 and empty.correct is None


HE_DOC = Doc(
    "HumanEval/x",
    "q",
    "",
    {
        "prompt": 'import math\n\ndef add(a: int, b: int) -> int:\n    """Add two numbers."""\n',
        "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
        "entry_point": "add",
    },
)


@pytest.mark.parametrize(
    "output, passes",
    [
        ("```python\ndef add(a: int, b: int) -> int:\n    return a + b\n```", True),
        ("Here you go:\n```python\nimport os\n\ndef add(a, b):\n    return a + b\n```\nIt adds them.", True),
        ("    return a + b\n", True),  # a continuation of the prompt
        ("    return a + b\n\nprint(add(1, 2))\nassert add(1, 1) == 3\n", True),  # trailing junk is cut
        (
            "```\ndef add(a, b):\n    return int(math.fsum([a, b]))\n",
            True,
        ),  # unterminated block; prompt imports kept
        ("```python\ndef add(a, b):\n    return a - b\n```", False),
        ("I am not able to write this function.", False),
    ],
)
def test_humaneval_extraction_and_execution(output, passes):
    (scored,) = get_task("humaneval")().score_outputs([output], [HE_DOC])
    assert scored.correct is passes, scored.extracted


def test_math_scoring_off_the_main_thread():
    """math-verify's SIGALRM timeouts only work in the main thread; scoring elsewhere still works."""
    from concurrent.futures import ThreadPoolExecutor

    task = get_task("math500")()
    with ThreadPoolExecutor(1) as pool:
        (scored,) = pool.submit(
            task.score_outputs, ["Answer: \\dfrac{3}{4}"], [Doc("m", "q", "\\frac34")]
        ).result()
    assert scored.correct is True


def test_unloadable_embedding_model_fails_before_generation(tmp_path):
    from ptr.errors import PtrError

    with pytest.raises(PtrError, match="cannot load embedding model"):
        get_task("xsum")(embedding_model=str(tmp_path / "no-such-model")).prepare()
