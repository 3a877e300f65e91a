"""Per-step metrics: one stdout line, one ``metrics.jsonl`` record, MLflow when configured (rank 0).

Loss terms and tokens are global (all-reduced over ranks); lr, grad norm and peak memory are rank 0's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ptr.jsonl import append_jsonl, repair_jsonl, write_jsonl

TERMS = ("loss", "nll", "consistency", "confidence")


class MetricsLog:
    def __init__(self, path: Path, tracker, *, resume_step: int = 0, write=print):
        self.path, self.tracker, self.write = Path(path), tracker, write
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_jsonl(self.path)  # a torn last line from a kill
        if self.path.exists():  # a resumed run replays nothing: drop steps it will redo
            kept = [r for r in self.records() if r["step"] <= resume_step]
            write_jsonl(self.path, kept)

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def log(self, record: dict) -> None:
        append_jsonl(self.path, [record])
        self.tracker.log_metrics({k: v for k, v in record.items() if k != "step"}, step=record["step"])
        self.write(format_line(record))


def format_line(r: dict) -> str:
    return (
        f"step {r['step']}/{r['total_steps']} epoch {r['epoch']} loss {r['loss']:.4f} nll {r['nll']:.4f} "
        f"cons {r['consistency']:.4f} conf {r['confidence']:.4f} lr {r['lr']:.3g} gnorm {r['grad_norm']:.3f} "
        f"tok/s {r['tokens_per_s']:.0f} step_time {r['step_time']:.3f}s peak_mem {r['peak_mem_mb']:.0f}MB"
    )


def plot(records: list[dict], out: Path) -> Path | None:
    """Loss and its terms against the step, as a PNG."""
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(steps, [r["loss"] for r in records], label="total")
    top.plot(steps, [r["nll"] for r in records], label="answer NLL")
    top.set_ylabel("loss")
    top.legend()
    bottom.plot(steps, [r["consistency"] for r in records], label="consistency (1 − cos)")
    bottom.plot(steps, [r["confidence"] for r in records], label="confidence (Σβ(1 − Pr))")
    bottom.set_xlabel("optimizer step")
    bottom.legend()
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def log_stderr(message: str) -> None:
    print(f"ptr train: {message}", file=sys.stderr, flush=True)
