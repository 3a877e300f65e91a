"""Evaluation: ask, refine for R rounds, score every round on the paper's benchmarks.

``evaluate(EvalConfig(...)) -> EvalResults`` is the entry point for pipelines; ``ptr eval`` is the CLI;
``score_predictions([...])`` re-scores saved generations. Tasks live in ``ptr/evaluate/tasks/``.
"""

from ptr.evaluate.config import EvalConfig, TaskConfig, load_task_configs
from ptr.evaluate.results import EvalResults, TaskResult
from ptr.evaluate.runner import evaluate, score_predictions
from ptr.evaluate.task_registry import expand_tasks, get_task, register_task, task_names

__all__ = [
    "EvalConfig",
    "EvalResults",
    "TaskConfig",
    "TaskResult",
    "evaluate",
    "expand_tasks",
    "get_task",
    "load_task_configs",
    "register_task",
    "score_predictions",
    "task_names",
]
