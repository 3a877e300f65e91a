"""Point the overlays and cluster configs at the registry ``make images IMAGE_REGISTRY=…`` pushed to.

    python images/use_registry.py REGISTRY [--tag TAG] [--root DIR]     (make use-registry)

Replaces the placeholder ``registry.example.com/ptr`` (and the tag of ptr's own images) in
``manifests/overlays/*/kustomization.yaml`` and ``pipelines/configs/*.yaml``, keeping comments.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

PLACEHOLDER = "registry.example.com/ptr"
FILES = ("manifests/overlays/*/kustomization.yaml", "pipelines/configs/*.yaml")


def rewrite(text: str, registry: str, tag: str | None) -> str:
    registry = registry.rstrip("/")
    # config files: image: registry.example.com/ptr/ptr-gpu:0.1.0
    text = re.sub(
        rf"{re.escape(PLACEHOLDER)}/(ptr(?:-gpu)?):(\S+)",
        lambda m: f"{registry}/{m[1]}:{tag or m[2]}",
        text,
    )
    # kustomizations: newName: registry.example.com/ptr/ptr, then newTag on the next line
    text = re.sub(
        rf"(newName:\s*){re.escape(PLACEHOLDER)}/(ptr(?:-gpu)?)(\s*\n\s*newTag:\s*)(\S+)",
        lambda m: f'{m[1]}{registry}/{m[2]}{m[3]}"{tag or m[4].strip(chr(34))}"',  # quoted: 2.0 is a string
        text,
    )
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python images/use_registry.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("registry", help="e.g. registry.acme.io/ml (where ptr and ptr-gpu were pushed)")
    parser.add_argument("--tag", help="image tag (default: keep the current one)")
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="repository root")
    args = parser.parse_args(argv)
    if not args.registry or "/" not in args.registry and "." not in args.registry.split(":")[0]:
        print(f"use_registry: {args.registry!r} does not look like a registry (host[/path])", file=sys.stderr)
        return 2
    root = Path(args.root)
    for pattern in FILES:
        for path in sorted(root.glob(pattern)):
            before = path.read_text()
            after = rewrite(before, args.registry, args.tag)
            if after != before:
                path.write_text(after)
                print(f"updated {path.relative_to(root)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
