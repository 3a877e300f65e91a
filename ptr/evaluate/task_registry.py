"""Tasks by name. A task registers itself with :func:`register_task`; every module under
``ptr/evaluate/tasks/`` is imported on first lookup, so adding a task is adding a module (or, from
another package, an entry point in the ``ptr.evaluate.tasks`` group)."""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

import ptr.evaluate.tasks as package
from ptr.errors import PtrError

_TASKS: dict[str, type] = {}
_ALIASES: dict[str, str] = {}
# Names that stand for several tasks.
GROUPS: dict[str, tuple[str, ...]] = {"arc": ("arc_challenge", "arc_easy")}
_loaded = False


def register_task(name: str, *aliases: str):
    """Class decorator: file the task under ``name`` (and ``aliases``)."""

    def decorate(cls):
        if name in _TASKS and _TASKS[name] is not cls:
            raise ValueError(
                f"task {name!r} is registered twice ({_TASKS[name].__module__}, {cls.__module__})"
            )
        cls.name = name
        if cls.data_folder == "":
            cls.data_folder = name
        _TASKS[name] = cls
        for alias in aliases:
            _ALIASES[alias] = name
        return cls

    return decorate


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")
    for ep in entry_points(group="ptr.evaluate.tasks"):
        ep.load()


def canonical_name(name: str) -> str:
    _load_all()
    key = name.strip().lower().replace("-", "_")
    return _ALIASES.get(key, key)


def task_names() -> list[str]:
    _load_all()
    return sorted(_TASKS)


def get_task(name: str) -> type:
    key = canonical_name(name)
    if key not in _TASKS:
        raise PtrError(f"unknown task {name!r}: expected one of {', '.join(task_names())} (or arc, all)")
    return _TASKS[key]


def expand_tasks(names: list[str]) -> list[str]:
    """Task names with groups and ``all`` expanded, aliases resolved, duplicates dropped, order kept."""
    out: list[str] = []
    for name in names:
        key = canonical_name(name)
        members = task_names() if key == "all" else GROUPS.get(key, (key,))
        for member in members:
            get_task(member)  # raises on an unknown name
            if member not in out:
                out.append(member)
    return out
