"""``make pipeline-run``: submit the pipeline to Kubeflow, or run it on this machine.

    python -m pipelines.run [--config FILE] [--set SECTION.KEY=VALUE]...   (KFP_HOST set: submit)
    python -m pipelines.run --local [--config FILE] ...                   (run here, kfp.local)
    python -m pipelines.run --compile OUT.yaml [--config FILE]

With ``KFP_HOST`` (or ``--host``) the pipeline is compiled with the config's cluster settings and
submitted with ``kfp.Client``; the run's URL is printed. Without it the whole pipeline runs here with
``kfp.local``'s SubprocessRunner and the embedded defaults (``pipelines/configs/local.yaml``); at the
end it prints the base-vs-trained task × round table, the promotion decision and where MLflow keeps
the results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import yaml

from pipelines.ptr_pipeline import build_pipeline, compile_pipeline
from ptr.cluster import kfp_client
from ptr.errors import PtrError, cli_errors
from ptr.pipeline.config import PipelineConfig, load_config
from ptr.tracking import local_store_uri

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "pipelines" / "configs"
LOCAL_CONFIG = CONFIGS / "local.yaml"
CLUSTER_CONFIG = CONFIGS / "cluster-example.yaml"


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """``train.max_steps=4`` → ``{"train": {"max_steps": 4}}`` (values parsed as YAML)."""
    overrides: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        name, dot, field = key.partition(".")
        if not sep or not dot or not field:
            raise PtrError(f"--set expects SECTION.KEY=VALUE, got {item!r}")
        overrides.setdefault(name, {})[field] = yaml.safe_load(value)
    return overrides


# ------------------------------------------------------------------------------------- cluster


def submit(
    config: PipelineConfig, host: str, *, client=None, run_name: str | None = None, env: dict | None = None
) -> str:
    """Compile with the config's cluster settings, submit (to the profile namespace in multi-user KFP,
    with the credentials of the environment: ptr.cluster.kfp_client), return the run's URL."""
    if config.run.runtime != "kubernetes":
        raise PtrError(
            "submitting to Kubeflow needs run.runtime: kubernetes (see pipelines/configs/cluster-example.yaml)"
        )
    cluster = config.run.kube
    namespace = kfp_client.run_namespace(cluster.kfp_mode, cluster.namespace, env)
    client = client or kfp_client.connect(host, mode=cluster.kfp_mode, namespace=cluster.namespace, env=env)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(config, Path(tmp) / "ptr_pipeline.yaml")
        result = client.create_run_from_pipeline_package(
            str(package),
            arguments=config.arguments(),
            run_name=run_name or f"ptr-{time.strftime('%Y%m%d-%H%M%S')}",
            experiment_name=config.run.experiment,
            namespace=namespace,
            service_account=cluster.service_account,
        )
    return kfp_client.run_url(
        host, result.run_id, mode=cluster.kfp_mode, namespace=cluster.namespace, env=env
    )


# --------------------------------------------------------------------------------------- local


def local_tracking_uri() -> str:
    """The MLflow store of local runs: the one configured (e.g. ``make stack-up``'s server), else the
    local sqlite store of ptr.tracking, named absolutely so every step's process uses the same one."""
    return os.environ.get("MLFLOW_TRACKING_URI") or local_store_uri()


def run_local(config: PipelineConfig, *, pipeline_root: Path | None = None) -> dict:
    """Run every step here, one after another; return what the run produced (paths and records)."""
    from kfp import local

    if config.run.runtime != "local":
        raise PtrError("a local run needs run.runtime: local")
    os.environ["MLFLOW_TRACKING_URI"] = local_tracking_uri()
    pipeline_root = Path(pipeline_root or REPO / ".ptr" / "pipeline-runs")
    # The image names a container for clusters; locally the steps run in this Python environment.
    warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True
    )
    started = time.monotonic()
    task = build_pipeline(config)(**config.arguments())
    report = Path(task.output.path)
    run_dir = report.parents[1]
    return {
        "run_dir": str(run_dir),
        "report": report.read_text(),
        "registration": _record(run_dir, "registration.json"),
        "decision": _record(run_dir, "decision.json"),
        "seconds": time.monotonic() - started,
        "tracking_uri": os.environ["MLFLOW_TRACKING_URI"],
    }


def _record(run_dir: Path, name: str) -> dict:
    found = sorted(run_dir.glob(f"*/*/{name}"))
    return json.loads(found[0].read_text()) if found else {}


def summary(result: dict, experiment: str) -> str:
    reg, decision = result["registration"], result["decision"]
    uri = result["tracking_uri"]
    lines = [
        "",
        result["report"].rstrip(),
        "",
        f"Model {reg.get('name')} version {reg.get('version')} (run id {reg.get('run_id')}): "
        + ("promoted to champion" if decision.get("promoted") else "kept as candidate")
        + (f" — {decision['reason']}" if decision.get("reason") else ""),
        f"MLflow: tracking URI {uri}, experiment {experiment!r}; runs tagged ptr.run_id={reg.get('run_id')}",
    ]
    if uri.startswith("sqlite:"):
        lines.append(
            f"  browse: .venv/bin/mlflow ui --backend-store-uri {uri}   (then http://127.0.0.1:5000, "
            "the experiment with ?workflowType=machine_learning to land on its runs)"
        )
    lines.append(f"Artifacts of every step: {result['run_dir']}  ({result['seconds'] / 60:.1f} min)")
    return "\n".join(lines)


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.run", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", help="a pipeline config (YAML); default: local.yaml, or cluster-example.yaml with a host"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override one value"
    )
    parser.add_argument(
        "--host", default=os.environ.get("KFP_HOST"), help="Kubeflow Pipelines endpoint (env KFP_HOST)"
    )
    parser.add_argument("--local", action="store_true", help="run here even when KFP_HOST is set")
    parser.add_argument("--compile", metavar="OUT", help="only compile the pipeline to OUT")
    args = parser.parse_args(argv)
    on_cluster = bool(args.host) and not args.local
    default = CLUSTER_CONFIG if (on_cluster or args.compile) else LOCAL_CONFIG
    config = load_config(args.config or default, parse_overrides(args.set))
    if args.compile:
        print(compile_pipeline(config, args.compile))
        return 0
    if on_cluster:
        print(f"submitted: {submit(config, args.host)}")
        return 0
    result = run_local(config)
    print(summary(result, config.run.experiment))
    return 0


if __name__ == "__main__":
    sys.exit(main())
