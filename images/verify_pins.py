"""Check that an environment holds exactly the versions pyproject.toml pins (run inside each image
build, and by the tests against the development environment).

    python images/verify_pins.py pyproject.toml [--extra NAME]...   exit 1 listing every mismatch
    python images/verify_pins.py --merge BASE OVERRIDES               print BASE with OVERRIDES' lines
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from importlib import metadata


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pin(line: str) -> tuple[str, str] | None:
    """``name==version`` (extras and markers ignored) → (canonical name, version); None otherwise."""
    line = line.split("#", 1)[0].split(";", 1)[0].strip()
    match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s,]+)", line)
    return (canonical(match[1]), match[3]) if match else None


def pins(pyproject: str, extras: list[str]) -> dict[str, str]:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    found = {}
    for line in lines:
        pin = parse_pin(line)
        if pin is None:
            raise SystemExit(f"{pyproject}: {line!r} is not pinned with ==")
        found[pin[0]] = pin[1]
    return found


def public(version: str) -> str:
    return version.split("+", 1)[0]  # torch 2.13.0+cpu / +cu128 is release 2.13.0


def mismatches(expected: dict[str, str]) -> list[str]:
    problems = []
    for name, version in sorted(expected.items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name}: pinned {version}, not installed")
            continue
        if public(installed) != version:
            problems.append(f"{name}: pinned {version}, installed {installed}")
    return problems


def merge(base: str, overrides: str) -> str:
    def entries(path):
        with open(path) as f:
            return [line.rstrip("\n") for line in f]

    replaced = {parse_pin(line)[0] for line in entries(overrides) if parse_pin(line)}
    kept = [line for line in entries(base) if not (parse_pin(line) and parse_pin(line)[0] in replaced)]
    return "\n".join(kept + [line for line in entries(overrides) if parse_pin(line)]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("pyproject", nargs="?")
    parser.add_argument("--extra", action="append", default=[])
    parser.add_argument("--merge", nargs=2, metavar=("BASE", "OVERRIDES"))
    args = parser.parse_args(argv)
    if args.merge:
        sys.stdout.write(merge(*args.merge))
        return 0
    problems = mismatches(pins(args.pyproject or "pyproject.toml", args.extra))
    for problem in problems:
        print(f"verify_pins: {problem}", file=sys.stderr)
    if not problems:
        print(f"verify_pins: every pin of {args.pyproject} is installed exactly")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
