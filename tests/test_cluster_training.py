"""The train step on a cluster: the PyTorchJob it builds (kubeflow-training SDK models), its submission
and the wait for the end.

No Kubernetes API server can run on this machine, so submission is tested up to the API call: a real
``TrainingClient`` whose Kubernetes ``CustomObjectsApi`` is replaced by a recorder that answers as the
API server would. Everything up to that call — the SDK's own checks and serialization — is real.
"""

from __future__ import annotations

import pytest
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException

from ptr.cluster import job_entry, pytorchjob, training
from ptr.cluster.settings import Cluster, Resources, Storage
from ptr.errors import PtrError
from ptr.pipeline.config import Run, Train, load_config
from tests.support.k8s import REPO, validate_custom

RUN_ID = "0b7c2d9e-1f3a-4c5b-8d6e-9a0b1c2d3e4f"


def _config(storage: Storage | None = None, gpus: int = 2):
    cluster = Cluster(
        image="reg/ptr:1",
        gpu_image="reg/ptr-gpu:1",
        storage=storage or Storage(pvc="ptr-work"),
        train_resources=Resources(cpu="8", memory="32Gi", gpus=gpus),
        node_selector={"pool": "gpu"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    run = Run(runtime="kubernetes", cluster=cluster, seed=7)
    train = Train(
        base_model="Qwen/Qwen2-0.5B",
        num_nodes=2,
        nproc_per_node=2,
        max_steps=50,
        deepspeed_config="zero2.json",
    )
    return run, train


def _job(run, train, with_ds=True):
    """The plan and job the train step builds (its TrainConfig's paths are replaced by the plan's)."""
    config = train.train_config("local-shards", "local-output", seed=run.seed)
    plan = training.plan(run.kube, config, RUN_ID, with_ds_config=with_ds)
    job = training.training_job(
        run.kube, plan, RUN_ID, nodes=train.num_nodes, nproc_per_node=train.nproc_per_node
    )
    return plan, job


def test_two_node_job_matches_the_crd_and_carries_the_run_id():
    run, train = _config()
    plan, job = _job(run, train)
    obj = pytorchjob.to_dict(job)
    validate_custom(obj)
    assert obj["metadata"]["labels"]["ptr.run_id"] == RUN_ID
    assert obj["metadata"]["namespace"] == "ptr" and obj["metadata"]["name"].startswith("ptr-train-")
    specs = obj["spec"]["pytorchReplicaSpecs"]
    assert (specs["Master"]["replicas"], specs["Worker"]["replicas"]) == (1, 1)
    assert obj["spec"]["nprocPerNode"] == "2"
    for spec in specs.values():
        pod = spec["template"]
        assert pod["metadata"]["labels"]["ptr.run_id"] == RUN_ID
        (container,) = pod["spec"]["containers"]
        assert container["name"] == "pytorch" and container["image"] == "reg/ptr-gpu:1"
        assert container["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}
        assert {"mountPath": "/mnt/ptr", "name": "work"} in container["volumeMounts"]
        assert {"name": "work", "persistentVolumeClaim": {"claimName": "ptr-work"}} in pod["spec"]["volumes"]
        assert pod["spec"]["nodeSelector"] == {"pool": "gpu"}
        assert pod["spec"]["serviceAccountName"] == "ptr-pipeline"
        env = {e["name"]: e for e in container["env"]}
        assert env["PTR_RUN_ID"]["value"] == RUN_ID
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "ptr-s3-credentials"
        command = container["command"]
        assert command[:3] == ["python", "-m", "ptr.cluster.job_entry"]
        train_flags = command[command.index("--") + 1 :]
        root = f"/mnt/ptr/runs/{RUN_ID}"
        assert train_flags[train_flags.index("--data_path") + 1] == f"{root}/shards"
        assert train_flags[train_flags.index("--deepspeed_config_path") + 1] == f"{root}/deepspeed.json"
        assert train_flags[train_flags.index("--max_steps") + 1] == "50"
        assert train_flags[train_flags.index("--seed") + 1] == "7"
        assert "--loss_weights" not in train_flags  # the default: the trainer applies the same one
    assert plan.model == f"{root}/output/ptr/final"


def test_s3_storage_stages_inputs_in_and_the_model_out():
    run, train = _config(Storage(s3_uri="s3://bucket/ptr"))
    plan, job = _job(run, train)
    obj = pytorchjob.to_dict(job)
    validate_custom(obj)
    container = obj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert "volumeMounts" not in container or all(m["name"] != "work" for m in container["volumeMounts"])
    command = container["command"]
    own = command[: command.index("--")]
    root = f"s3://bucket/ptr/runs/{RUN_ID}"
    assert (
        f"{root}/shards=/tmp/ptr-work/shards" in own
        and f"{root}/deepspeed.json=/tmp/ptr-work/deepspeed.json" in own
    )
    assert own[own.index("--publish") + 1] == f"/tmp/ptr-work/output/ptr/final={root}/model"
    assert plan.model == f"{root}/model"


def test_cpu_job_single_node_has_no_worker_and_no_gpu():
    run, train = _config(gpus=0)
    train = train.model_copy(update={"num_nodes": 1})
    _, job = _job(run, train, with_ds=False)
    obj = pytorchjob.to_dict(job)
    validate_custom(obj)
    assert list(obj["spec"]["pytorchReplicaSpecs"]) == ["Master"]
    container = obj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert container["image"] == "reg/ptr:1" and "nvidia.com/gpu" not in container["resources"]["limits"]
    assert "--deepspeed_config_path" not in container["command"]


def test_more_processes_than_gpus_is_refused():
    run, train = _config(gpus=1)
    with pytest.raises(PtrError, match="exceeds the 1 GPUs"):
        _job(run, train)


def test_example_config_builds_the_committed_example():
    import yaml

    from pipelines.examples import pytorchjob_example

    config = load_config(REPO / "pipelines/configs/cluster-example.yaml")
    committed = yaml.safe_load((REPO / "manifests/examples/pytorchjob-2node.yaml").read_text())
    assert pytorchjob_example(config) == committed


# ---------------------------------------------------------------- submission, up to the API call


class _Thread:
    def __init__(self, value):
        self.value = value

    def get(self, timeout=None):
        return self.value


class FakeCustomObjects:
    """Stands in for the API server behind kubernetes.client.CustomObjectsApi (none can run here)."""

    def __init__(self, statuses=(), exists=False):
        self.created, self.deleted = [], []
        self.statuses = list(statuses)
        self.exists = exists
        self.body = None

    def create_namespaced_custom_object(self, group, version, namespace, plural, body, **kw):
        if self.exists:
            raise ApiException(status=409, reason="Conflict: AlreadyExists")
        self.body = ApiClient().sanitize_for_serialization(body)
        self.created.append((group, version, namespace, plural, self.body))
        self.exists = True

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, body=None, **kw):
        self.deleted.append(name)
        self.exists = False

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, **kw):
        if not self.exists:
            raise ApiException(status=404, reason="Not Found")
        status = (
            self.statuses.pop(0) if len(self.statuses) > 1 else (self.statuses[0] if self.statuses else {})
        )
        obj = {
            **(
                self.body
                or {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": name}}
            ),
            "status": status,
        }
        return _Thread(obj) if kw.get("async_req") else obj


def _client(fake):
    from kubeflow.training import TrainingClient

    client = TrainingClient(client_configuration=Configuration(host="http://127.0.0.1:9"), namespace="ptr")
    client.custom_api = fake
    return client


def _cond(kind, reason="", message=""):
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


def test_submit_sends_the_job_to_the_api():
    run, train = _config()
    _, job = _job(run, train)
    fake = FakeCustomObjects()
    pytorchjob.submit(job, _client(fake))
    ((group, version, namespace, plural, body),) = fake.created
    assert (group, version, namespace, plural) == ("kubeflow.org", "v1", "ptr", "pytorchjobs")
    assert body == pytorchjob.to_dict(job)


def test_submit_replaces_a_job_left_by_an_earlier_attempt():
    run, train = _config()
    _, job = _job(run, train)
    fake = FakeCustomObjects(exists=True)
    pytorchjob.submit(job, _client(fake))
    assert fake.deleted == [job.metadata.name] and len(fake.created) == 1


def test_wait_reports_states_and_returns_on_success():
    fake = FakeCustomObjects(
        [
            {"conditions": [_cond("Created")]},
            {
                "conditions": [_cond("Created"), _cond("Running")],
                "replicaStatuses": {"Master": {"active": 1}, "Worker": {"active": 1}},
            },
            {"conditions": [_cond("Created"), _cond("Running"), _cond("Succeeded", "PyTorchJobSucceeded")]},
        ],
        exists=True,
    )
    lines = []
    state = pytorchjob.wait(_client(fake), "ptr-train-x", "ptr", timeout=60, poll=0, report=lines.append)
    assert state == "Succeeded"
    assert [line.split(": ")[1].split(".")[0] for line in lines] == [
        "Created",
        "Running",
        "Succeeded (PyTorchJobSucceeded)",
    ]
    assert "Master: 1 active" in lines[1]


def test_wait_fails_with_the_jobs_reason():
    failed = {
        "conditions": [
            _cond("Running"),
            _cond("Failed", "PyTorchJobFailed", "Worker-0 exited with code 137 (OOMKilled)"),
        ]
    }
    fake = FakeCustomObjects([failed], exists=True)
    with pytest.raises(
        PtrError, match=r"failed: PyTorchJobFailed: Worker-0 exited with code 137 \(OOMKilled\)"
    ):
        pytorchjob.wait(_client(fake), "ptr-train-x", "ptr", timeout=60, poll=0, report=lambda _: None)


def test_wait_times_out_with_the_last_state():
    fake = FakeCustomObjects([{"conditions": [_cond("Running")]}], exists=True)
    with pytest.raises(PtrError, match="did not finish within 0s .last state Running"):
        pytorchjob.wait(_client(fake), "ptr-train-x", "ptr", timeout=0, poll=0, report=lambda _: None)


# ---------------------------------------------------------------- inside each replica


def test_job_entry_reads_the_operators_rendezvous():
    env = {
        "PET_NNODES": "2",
        "PET_NODE_RANK": "1",
        "PET_NPROC_PER_NODE": "4",
        "PET_MASTER_ADDR": "job-master-0",
        "PET_MASTER_PORT": "23456",
    }
    command = job_entry.torchrun_command(["--max_steps", "3"], env)
    assert command[1:3] == ["-m", "torch.distributed.run"]
    assert command[3:13] == [
        "--nnodes",
        "2",
        "--node_rank",
        "1",
        "--nproc_per_node",
        "4",
        "--master_addr",
        "job-master-0",
        "--master_port",
        "23456",
    ]
    assert command[-4:] == ["-m", "ptr.train", "--max_steps", "3"] and job_entry.node_rank(env) == 1


def test_job_entry_falls_back_to_the_plain_variables():
    env = {"WORLD_SIZE": "3", "RANK": "0", "MASTER_ADDR": "m", "MASTER_PORT": "1"}
    command = job_entry.torchrun_command([], env)
    assert "--nnodes" in command and command[command.index("--nnodes") + 1] == "3"
    assert "--nproc_per_node" not in command and job_entry.node_rank(env) == 0
