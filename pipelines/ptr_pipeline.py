"""The PTR pipeline: queries → thoughts → encode → train → register → deploy → evaluate → promote.

The base model's evaluation runs beside the data and training steps (it needs nothing from them), and
the candidate's report puts both side by side. Parameters are the five typed sections of
:class:`ptr.pipeline.config.PipelineConfig`, one ``dict`` each; their defaults are the config the
pipeline is compiled with. Kubernetes settings (images, resources, secrets, the shared volume, node
selectors) are applied at compile time from the config's ``run.cluster``.
"""

from pathlib import Path

from kfp import compiler, dsl, kubernetes
from kfp.dsl import Markdown

from components import (
    deploy_model,
    encode_thoughts,
    evaluate_base,
    evaluate_candidate,
    make_queries,
    make_thoughts,
    promote_candidate,
    register_model,
    train_model,
)
from ptr.cluster.settings import Cluster, Resources
from ptr.pipeline.config import PipelineConfig

PIPELINE_NAME = "ptr"
COMPILED = Path(__file__).resolve().parent / "compiled" / "ptr_pipeline.yaml"


def _on_cluster(task: dsl.PipelineTask, cluster: Cluster, resources: Resources, *, gpu_image: bool = False):
    """Image, resources, environment, secrets and the shared volume of one task."""
    task.set_container_image(cluster.gpu_image if gpu_image else cluster.image)
    task.set_cpu_request(resources.cpu).set_cpu_limit(resources.cpu)
    task.set_memory_request(resources.memory).set_memory_limit(resources.memory)
    if resources.gpus:
        task.set_accelerator_type(resources.gpu_resource).set_accelerator_limit(resources.gpus)
        for key, value in cluster.node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for toleration in cluster.tolerations:
            kubernetes.add_toleration(task, **toleration.model_dump(exclude_none=True))
    for name, value in sorted(cluster.env.items()):
        task.set_env_variable(name, value)
    for secret, keys in sorted(cluster.env_secrets.items()):
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env={k: k for k in keys})
    if cluster.storage.pvc:
        kubernetes.mount_pvc(task, pvc_name=cluster.storage.pvc, mount_path=cluster.storage.mount_path)
    return task


def build_pipeline(config: PipelineConfig):
    """The pipeline function, its parameter defaults and Kubernetes settings taken from ``config``."""
    defaults = config.arguments()
    cluster = config.run.cluster

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Progressive Thought Refinement: thought data, weighted thought-mask fine-tuning, "
        "multi-round evaluation, serving and gated promotion.",
    )
    def ptr_pipeline(
        run: dict = defaults["run"],
        data: dict = defaults["data"],
        train: dict = defaults["train"],
        evaluate: dict = defaults["evaluate"],
        promote: dict = defaults["promote"],
    ) -> Markdown:
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        queries = make_queries(run=run, data=data, run_id=run_id).set_display_name("queries")
        thoughts = make_thoughts(run=run, data=data, run_id=run_id, queries=queries.outputs["queries"])
        thoughts.set_display_name("thoughts")
        shards = encode_thoughts(run=run, train=train, run_id=run_id, thoughts=thoughts.outputs["thoughts"])
        shards.set_display_name("encode")
        model = train_model(run=run, train=train, run_id=run_id, shards=shards.outputs["shards"])
        model.set_display_name("train")
        registered = register_model(run=run, run_id=run_id, model=model.outputs["model"]).set_display_name(
            "register"
        )
        served = deploy_model(
            run=run,
            evaluate=evaluate,
            run_id=run_id,
            model=model.outputs["model"],
            registration=registered.outputs["registration"],
        ).set_display_name("deploy")
        base = evaluate_base(
            run=run, evaluate=evaluate, train=train, promote=promote, run_id=run_id
        ).set_display_name("evaluate-base")
        scored = evaluate_candidate(
            run=run,
            evaluate=evaluate,
            run_id=run_id,
            endpoint=served.outputs["endpoint"],
            base=base.outputs["results"],
        ).set_display_name("evaluate")
        decided = promote_candidate(
            run=run,
            promote=promote,
            run_id=run_id,
            registration=registered.outputs["registration"],
            base=base.outputs["results"],
            results=scored.outputs["results"],
        ).set_display_name("promote")
        if cluster is not None:
            for task in (queries, shards, model, registered, served, scored, decided):
                _on_cluster(task, cluster, cluster.step_resources)
            for task in (thoughts, base):
                _on_cluster(
                    task, cluster, cluster.generate_resources, gpu_image=cluster.generate_resources.gpus > 0
                )
            # Steps that only wait on the cluster (a PyTorchJob, an InferenceService) may wait long.
            for task in (model, served, decided):
                kubernetes.set_timeout(task, cluster.job_timeout_s + cluster.ready_timeout_s)
        for task in (queries, thoughts, shards, model, registered, served, base, scored, decided):
            task.set_caching_options(False)  # every run is new data; the run id is an input anyway
        return scored.outputs["report"]

    return ptr_pipeline


def compile_pipeline(config: PipelineConfig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(config), str(path))
    return path
