"""Reference check: score the same generations with our harness and with lm-evaluation-harness
(lm_eval's own task definitions, filters and metric: gsm8k-cot and mmlu flan_cot_zeroshot), and compare
per question and round.

    python tests/bench/lm_eval_reference.py --predictions out/x/gsm8k.predictions.jsonl out/x/mmlu.predictions.jsonl
    python tests/bench/lm_eval_reference.py --limit 50          # generate them first (smollm2, 1 round)

lm_eval runs offline on task files written into a temporary folder that point at a JSON-lines copy of
the rows (never kept); a replay model hands lm_eval the very text our harness scored. Every
disagreement is printed with its cause. Last line: JSON, ``ratio`` = the share of (question, round)
pairs where our verdict equals lm_eval's strict-match verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see tests/conftest.py

from tests.support.lm_eval_local import (  # noqa: E402
    default_data_dir,
    evaluate,
    lm_eval_task_file,
    replay_model,
    write_task,
)

SPECS = {
    "gsm8k": ("gsm8k/gsm8k-cot.yaml", lambda rec: {"answer": f"#### {rec['gold']}"}),
    "mmlu": (
        "mmlu/flan_cot_zeroshot/_mmlu_flan_cot_zeroshot_template_yaml",
        lambda rec: {"choices": rec["doc"]["choices"], "answer": "ABCD".index(rec["gold"])},
    ),
}


def generate(limit: int, rounds: int, model: str, folder: Path) -> list[Path]:

    from ptr.evaluate import EvalConfig, TaskConfig
    from ptr.evaluate import evaluate as ptr_evaluate

    config = EvalConfig(
        model_path=model,
        tasks=["gsm8k", "mmlu"],
        rounds=rounds,
        data_dir=default_data_dir(),
        task_configs={"gsm8k": TaskConfig(limit=limit), "mmlu": TaskConfig(limit=limit, sample="random")},
        output_path=str(folder),
        save_name="generated",
        plot=False,
    )
    out = ptr_evaluate(config).output_dir
    return [out / "gsm8k.predictions.jsonl", out / "mmlu.predictions.jsonl"]


def tail(text: str, n: int = 110) -> str:
    return json.dumps(" ".join(text.split())[-n:], ensure_ascii=False)


def cause(task: str, ours: dict, strict: str, flexible: str, gold: str, output: str) -> str:
    """Why the two harnesses read this output differently (checked rules, not a guess)."""
    if task == "gsm8k":
        stated = re.findall(r"The answer is (\S+)", output)
        if strict == "[invalid]" and stated:
            return f"lm_eval strict needs 'The answer is <digits>.'; the model wrote 'The answer is {stated[-1]}'"
        if strict == "[invalid]" and re.search(r"(?i)answer", output):
            return (
                "the answer is stated without the exact phrase 'The answer is N.' (e.g. 'Answer: N', '**N**')"
            )
        if strict == "[invalid]":
            return "no answer statement: ours takes the last number of the solution"
        return f"lm_eval strict read {strict!r}; ours read {ours['extracted']!r}"
    if strict == "[invalid]" and flexible == "[invalid]":
        return "no '(X)' and no 'The answer is' in lm_eval's form: " + (
            "a bold or bare letter"
            if re.search(r"\*\*[A-D]\*\*|\b[A-D]\)", output)
            else "option named by its text"
        )
    return f"lm_eval read strict {strict!r} / flexible {flexible!r}; ours {ours['extracted']!r}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--predictions", nargs="*", help="our gsm8k / mmlu predictions files")
    ap.add_argument("--limit", type=int, default=50, help="questions per task when generating")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--report", help="also write the disagreements as Markdown here")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="ptr-lm-eval-") as tmp:
        tmp = Path(tmp)
        paths = (
            [Path(p) for p in args.predictions]
            if args.predictions
            else generate(args.limit, args.rounds, args.model, tmp)
        )
        outputs, ours, tasks = {}, {}, []
        for index, path in enumerate(paths):
            records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            task = records[0]["task"]
            if task not in SPECS:
                raise SystemExit(f"{path}: task {task} has no lm_eval counterpart here")
            include, row_of = SPECS[task]
            rows = []
            for rec in records:
                for r in rec["rounds"]:
                    key = f"{path.stem.split('.')[0]}{index}:{rec['id']}#r{r['round']}"
                    outputs[key] = r["output"]
                    ours[(task, key)] = {**r, "gold": rec["gold"]}
                    rows.append({"key": key, **row_of(rec)})
            name = f"ref_{task}_{index}"
            write_task(
                tmp / "tasks",
                name,
                rows,
                {"include": str(lm_eval_task_file(include)), "doc_to_text": "{{key}}"},
            )
            tasks.append((task, name, rows))
        result = evaluate(replay_model(outputs), tmp / "tasks", [name for _, name, _ in tasks])

    summary, lines = {}, []
    for task, name, rows in tasks:
        verdict = {}
        for s in result["samples"][name]:
            key = rows[s["doc_id"]]["key"]
            verdict.setdefault(key, {})[s["filter"]] = (
                s["filtered_resps"][0],
                float(s["exact_match"]) == 1.0,
            )
        counts = summary.setdefault(
            task, {"n": 0, "ours": 0, "strict": 0, "flexible": 0, "agree_strict": 0, "agree_flexible": 0}
        )
        for row in rows:
            key = row["key"]
            mine = ours[(task, key)]
            (s_val, s_ok), (f_val, f_ok) = verdict[key]["strict-match"], verdict[key]["flexible-extract"]
            ok = bool(mine["correct"])
            counts["n"] += 1
            counts["ours"] += ok
            counts["strict"] += s_ok
            counts["flexible"] += f_ok
            counts["agree_strict"] += ok == s_ok
            counts["agree_flexible"] += ok == f_ok
            if ok != s_ok or ok != f_ok:
                lines.append(
                    f"| {task} | {key} | {mine['gold']} | {mine['extracted']} ({'right' if ok else 'wrong'}) | "
                    f"{s_val} ({'right' if s_ok else 'wrong'}) | {f_val} ({'right' if f_ok else 'wrong'}) | {cause(task, mine, s_val, f_val, mine['gold'], mine['output'])} | {tail(mine['output'])} |"
                )

    table = [
        "| task | question#round | gold | ours | lm_eval strict | lm_eval flexible | cause | output (end) |",
        "|---|---|---|---|---|---|---|---|",
        *lines,
    ]
    print("\n".join(table))
    for task, c in summary.items():
        print(
            f"{task}: n={c['n']} ours={c['ours']} lm_eval strict={c['strict']} flexible={c['flexible']} "
            f"agree strict={c['agree_strict']} flexible={c['agree_flexible']}"
        )
    if args.report:
        Path(args.report).write_text("\n".join(table) + "\n")
    agree_total = sum(c["agree_strict"] for c in summary.values())
    n_total = sum(c["n"] for c in summary.values())
    print(
        json.dumps(
            {"ratio": agree_total / max(n_total, 1), "agree": agree_total, "n": n_total, "tasks": summary}
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
