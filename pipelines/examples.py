"""Example resources rendered by the project's own generators, committed under manifests/examples/,
and the compiled pipeline under pipelines/compiled/ (``make manifests`` regenerates both; the tests fail
when a committed file drifts from what the code renders).

    python -m pipelines.examples           write them
    python -m pipelines.examples --check   exit 1 naming each file that differs
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml

from pipelines.ptr_pipeline import COMPILED, compile_pipeline
from ptr.cluster import serving, training
from ptr.cluster.pytorchjob import to_dict
from ptr.pipeline.config import PipelineConfig, load_config

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "manifests" / "examples"
CLUSTER_EXAMPLE = REPO / "pipelines" / "configs" / "cluster-example.yaml"
EXAMPLE_RUN_ID = "3f2a9c4e-5b1d-4e8f-9a7c-2d6e8b0f1a3c"  # the shape of a KFP run id
HEADER = (
    "# Rendered by `make manifests` (pipelines/examples.py) from pipelines/configs/cluster-example.yaml.\n"
)


def _dump(obj: dict) -> str:
    return HEADER + yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)


def _plan(config: PipelineConfig):
    """The training plan of the example run (the train step builds the same)."""
    train_config = config.train.train_config("shards", "output", seed=config.run.seed)
    return training.plan(config.run.kube, train_config, EXAMPLE_RUN_ID, with_ds_config=False)


def pytorchjob_example(config: PipelineConfig) -> dict:
    """The 2-node PyTorchJob that the train step submits for the example cluster config."""
    job = training.training_job(
        config.run.kube,
        _plan(config),
        EXAMPLE_RUN_ID,
        nodes=config.train.num_nodes,
        nproc_per_node=config.train.nproc_per_node,
        experiment=config.run.experiment,
    )
    return to_dict(job)


def inference_service_examples(config: PipelineConfig) -> dict[str, dict]:
    """The candidate's InferenceService in both serving variants: the custom predictor (ptr serve) and
    KServe's Hugging Face runtime with vLLM."""
    model = _plan(config).model
    registration = {"name": config.run.model_name, "version": "1"}
    found = {}
    for runtime in ("ptr", "huggingface"):
        cluster = config.run.kube.model_copy(update={"serving_runtime": runtime})
        found[f"inferenceservice-{runtime}.yaml"] = serving.inference_service_for(
            cluster,
            serving.candidate_name(config.run.model_name, EXAMPLE_RUN_ID),
            model,
            model_name=config.run.model_name,
            run_id=EXAMPLE_RUN_ID,
            registration=registration,
        )
    return found


def render() -> dict[Path, str]:
    """Every generated file: path → content."""
    config = load_config(CLUSTER_EXAMPLE)
    files = {EXAMPLES / "pytorchjob-2node.yaml": _dump(pytorchjob_example(config))}
    for name, obj in inference_service_examples(config).items():
        files[EXAMPLES / name] = _dump(obj)
    with tempfile.TemporaryDirectory() as tmp:
        files[COMPILED] = compile_pipeline(config, Path(tmp) / "p.yaml").read_text()
    return files


def same(committed: str, rendered: str) -> bool:
    """Equal as YAML documents (the compiler's header comment lists defaults in no stable order)."""
    return list(yaml.safe_load_all(committed)) == list(yaml.safe_load_all(rendered))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.examples", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    drifted = []
    for path, content in render().items():
        if args.check:
            if not path.exists() or not same(path.read_text(), content):
                drifted.append(path.relative_to(REPO))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        print(f"wrote {path.relative_to(REPO)}")
    for path in drifted:
        print(f"{path} differs from what the code renders: run `make manifests`", file=sys.stderr)
    return 1 if drifted else 0


if __name__ == "__main__":
    raise SystemExit(main())
