"""``make reproduce``: the paper's comparison at this machine's scale, one pipeline run after another.

    python -m pipelines.reproduce [--configs ptr ift ptr-ce] [--set SECTION.KEY=VALUE]... [--pilot N]

Runs each config of ``pipelines/configs/reproduce/`` (default order: ``ptr``, ``ift``, ``ptr-ce`` —
the base model is evaluated by every run, once, through the stage cache) as a local pipeline run into
one MLflow experiment, each in its own process with its log in ``reports/reproduction-smollm2/logs/``
(git-ignored). A run that was stopped is continued by running the same command again: every finished
stage is reused (the stage cache, :mod:`ptr.pipeline.stage_cache`), so a rerun after everything
finished takes minutes. At the end, ``ptr compare`` writes the table, ``metrics.json`` and the figure
into the report folder, and ``times.md`` says where the time went (per step and model).

``--pilot N``: N questions per task into the experiment ``<experiment>-pilot`` and the report folder
``reports/reproduction-smollm2/pilot/`` (git-ignored), to check the whole path and measure it first.

Every process gets ``OMP_WAIT_POLICY=PASSIVE`` unless it is set (``make`` sets it too): on a machine
whose cores are shared, OpenMP threads that spin while they wait made one SmolLM2 decoding step 20×
slower (9.3 s against 0.44 s at batch 16 with one thread, measured here under load; with passive
waiting two threads took 0.30 s). Training ranks get one core each (``ptr.pipeline.launch``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pipelines.run import parse_overrides
from ptr.errors import PtrError, cli_errors
from ptr.pipeline.config import load_config
from ptr.pipeline.steps.common import STEP_TIMES
from ptr.tracking import local_dir
from ptr.tracking.compare import compare

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "pipelines" / "configs" / "reproduce"
ORDER = ("ptr", "ift", "ptr-ce")  # PTR first: if the time runs out, base vs PTR is the result
REPORT = REPO / "reports" / "reproduction-smollm2"


def config_paths(names: list[str]) -> list[Path]:
    paths = []
    for name in names:
        path = Path(name) if name.endswith(".yaml") else CONFIGS / f"{name}.yaml"
        if not path.is_file():
            known = ", ".join(p.stem for p in sorted(CONFIGS.glob("*.yaml")))
            raise PtrError(f"--configs {name}: no {path} (known: {known})")
        paths.append(path)
    return paths


def run_one(path: Path, overrides: list[str], log: Path, env: dict) -> float:
    """One local pipeline run in its own process, its output in ``log``; returns its wall time."""
    command = [sys.executable, "-m", "pipelines.run", "--local", "--config", str(path)]
    for item in overrides:
        command += ["--set", item]
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"== {path.stem}: {' '.join(command[1:])}\n   log: {log}", flush=True)
    with open(log, "ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        out.flush()
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    seconds = time.monotonic() - started
    if code != 0:
        raise PtrError(
            f"{path.stem}: the pipeline run failed (exit {code}) after {seconds / 60:.1f} min; see {log}"
        )
    print(f"   done in {seconds / 60:.1f} min", flush=True)
    return seconds


def step_times(since: float) -> list[dict]:
    """The step-time lines local runs wrote since ``since`` (a UNIX time)."""
    path = local_dir() / STEP_TIMES
    if not path.exists():
        return []
    lines = []
    for text in path.read_text().splitlines():
        try:
            line = json.loads(text)
            when = time.mktime(time.strptime(line["time"], "%Y-%m-%dT%H:%M:%S"))
        except (ValueError, KeyError):
            continue
        if when >= since:
            lines.append(line)
    return lines


def times_table(lines: list[dict], walls: dict[str, float]) -> str:
    """Markdown: minutes per step (rows) and model run (columns); reused steps marked."""
    names = list(walls)
    steps = list(dict.fromkeys(line["step"] for line in lines))
    cell: dict[tuple[str, str], str] = {}
    for line in lines:
        text = f"{line['seconds'] / 60:.1f}" + (" (reused)" if line["reused"] else "")
        cell[(line["step"], line["name"])] = text
    head = ["step", *names]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for step in steps:
        out.append("| " + " | ".join([step] + [cell.get((step, n), "—") for n in names]) + " |")
    out.append("| **whole run** | " + " | ".join(f"**{walls[n] / 60:.1f}**" for n in names) + " |")
    return "\n".join(out) + "\n"


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.reproduce", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--configs", nargs="+", default=list(ORDER), help=f"configs to run (default: {' '.join(ORDER)})"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override in every run"
    )
    parser.add_argument(
        "--pilot", type=int, metavar="N", help="N questions per task, into a separate pilot experiment"
    )
    parser.add_argument("--report", help=f"report folder (default: {REPORT.relative_to(REPO)})")
    parser.add_argument("--no_compare", action="store_true", help="only run the pipelines")
    args = parser.parse_args(argv)
    paths = config_paths(args.configs)
    overrides = list(args.set)
    report = Path(args.report) if args.report else REPORT
    first = load_config(paths[0], parse_overrides(overrides))
    experiment = first.run.experiment
    if args.pilot:
        experiment += "-pilot"
        overrides += [f"evaluate.limit={args.pilot}", f"run.experiment={experiment}"]
        report = Path(args.report) if args.report else REPORT / "pilot"
    for path in paths:  # every config checked before the first hour is spent
        config = load_config(path, parse_overrides(overrides))
        if config.run.experiment != experiment:
            raise PtrError(
                f"{path}: run.experiment {config.run.experiment!r}; every run goes to {experiment!r}"
            )
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    started, walls = time.time(), {}
    for path in paths:
        name = load_config(path, parse_overrides(overrides)).run.name or path.stem
        walls[name] = run_one(path, overrides, report / "logs" / f"{path.stem}.log", env)
    table = times_table(step_times(started), walls)
    report.mkdir(parents=True, exist_ok=True)
    (report / "times.md").write_text(
        f"# Where the time went ({time.strftime('%Y-%m-%d %H:%M')}, minutes)\n\n" + table
    )
    print("\n" + table)
    if not args.no_compare:
        result = compare(experiment, None, report)
        print(result["table"])
        print(f"written: {', '.join(result['files'])}, {report / 'times.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
