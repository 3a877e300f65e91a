"""The train step on a cluster: the PyTorchJob it builds (kubeflow-training SDK models), its submission
and the wait for the end.

No Kubernetes API server can run on this machine, so submission is tested up to the API call: a real
``TrainingClient`` whose Kubernetes ``CustomObjectsApi`` is replaced by a recorder that answers as the
API server would. Everything up to that call — the SDK's own checks and serialization — is real.
"""

from __future__ import annotations

import pytest
from kubernetes.client import Configuration

from ptr.cluster import job_entry, pytorchjob, training
from ptr.cluster.settings import Cluster, Resources, Storage
from ptr.errors import PtrError
from ptr.pipeline.config import Run, Train, load_config
from tests.support.k8s import REPO, FakeKube, api_error, validate_custom

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
        run.kube, plan, RUN_ID, nodes=train.num_nodes, nproc_per_node=train.nproc_per_node, experiment="exp-a"
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
        # item 2: training code runs as the workload account, with no API token
        assert pod["spec"]["serviceAccountName"] == "ptr-workload"
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert pod["spec"]["securityContext"] == {"fsGroup": 1000, "runAsGroup": 1000, "runAsUser": 1000}
        env = {e["name"]: e for e in container["env"]}
        assert env["PTR_RUN_ID"]["value"] == RUN_ID
        # item 12: the run's MLflow experiment (not the tracking module's default) and the S3 endpoint
        assert env["PTR_EXPERIMENT"]["value"] == "exp-a"
        assert env["AWS_ENDPOINT_URL"]["value"] == "http://ptr-s3:8333"
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
#
# A real TrainingClient whose CustomObjectsApi and CoreV1Api are the recorded fake API of
# tests/support/k8s.py (no API server can run here): the SDK's own checks and (de)serialization run.

JOB = ("kubeflow.org", "pytorchjobs")


def _client(fake):
    from kubeflow.training import TrainingClient

    client = TrainingClient(client_configuration=Configuration(host="http://127.0.0.1:9"), namespace="ptr")
    client.custom_api = fake
    client.core_api = fake
    return client


def _cond(kind, reason="", message=""):
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


def _existing(fake, statuses, name="ptr-train-x"):
    obj = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name, "namespace": "ptr"},
    }
    fake.add(*JOB, obj, statuses)


@pytest.fixture(autouse=True)
def _no_backoff_sleep(monkeypatch):
    monkeypatch.setattr("ptr.cluster.api.time.sleep", lambda s: None)
    monkeypatch.setattr(pytorchjob.time, "sleep", lambda s: None)


def test_submit_sends_the_job_to_the_api():
    run, train = _config()
    _, job = _job(run, train)
    fake = FakeKube()
    pytorchjob.submit(job, _client(fake))
    ((key, body),) = fake.custom.items()
    assert key == ("kubeflow.org", "pytorchjobs", "ptr", job.metadata.name)
    sent = pytorchjob.to_dict(job)
    assert {k: v for k, v in body.items() if k != "metadata"} == {
        k: v for k, v in sent.items() if k != "metadata"
    }


def test_submit_replaces_a_job_left_by_an_earlier_attempt():
    run, train = _config()
    _, job = _job(run, train)
    fake = FakeKube()
    _existing(fake, [{}], name=job.metadata.name)
    pytorchjob.submit(job, _client(fake))
    assert [c[0] for c in fake.calls if c[1] == "pytorchjobs"][:2] == ["create", "delete"]
    assert ("create", "pytorchjobs", "ptr", job.metadata.name) == fake.calls[-1]


def test_replicas_restart_only_on_retryable_exits_and_finished_jobs_expire():
    """Items 7 and 8. Restart policy ExitCode: the operator restarts a replica only for exit codes
    130, 137, 138 and 143 (training-operator v1.9 pkg/util/train/train_util.go IsRetryableExitCode) and
    fails the job at once on 1 (a bug); ttlSecondsAfterFinished lets the operator delete a finished job
    (pkg/controller.v1/common/job.go CleanupJob). A restarted replica resumes: ``--resume auto``."""
    run, train = _config()
    _, job = _job(run, train)
    obj = pytorchjob.to_dict(job)
    validate_custom(obj)
    for spec in obj["spec"]["pytorchReplicaSpecs"].values():
        assert spec["restartPolicy"] == "ExitCode"
        command = spec["template"]["spec"]["containers"][0]["command"]
        train_flags = command[command.index("--") + 1 :]
        assert train_flags[train_flags.index("--resume") + 1] == "auto"
    policy = obj["spec"]["runPolicy"]
    assert policy["ttlSecondsAfterFinished"] > 0 and policy["backoffLimit"] >= 1
    assert policy["activeDeadlineSeconds"] == run.kube.job_timeout_s


def test_job_entry_exit_codes_follow_the_operators_policy(monkeypatch, capsys):
    """Item 8: what a replica exits with decides whether the operator restarts it."""
    assert job_entry.exit_code(-9) == 137 and job_entry.exit_code(-15) == 143 and job_entry.exit_code(1) == 1
    assert job_entry.RETRYABLE_EXIT == 138

    def unreachable(src, dest):
        raise ConnectionError("s3 endpoint unreachable")

    monkeypatch.setattr(job_entry.storage, "fetch", unreachable)
    monkeypatch.setattr(job_entry.subprocess, "Popen", lambda *a, **k: pytest.fail("trained without inputs"))
    assert job_entry.main(["--fetch", "s3://b/shards=/tmp/x", "--", "--max_steps", "1"]) == 138
    assert "staging in failed: ConnectionError" in capsys.readouterr().err


def test_wait_reports_states_and_returns_on_success():
    fake = FakeKube()
    _existing(
        fake,
        [
            {"conditions": [_cond("Created")]},
            {
                "conditions": [_cond("Created"), _cond("Running")],
                "replicaStatuses": {"Master": {"active": 1}, "Worker": {"active": 1}},
            },
            {"conditions": [_cond("Created"), _cond("Running"), _cond("Succeeded", "PyTorchJobSucceeded")]},
        ],
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


def _pod(name, *, terminated=None, last=None, restarts=0):
    status = {"name": "pytorch", "ready": False, "restartCount": restarts, "image": "i", "imageID": ""}
    if terminated:
        status["state"] = {"terminated": terminated}
    if last:
        status["lastState"] = {"terminated": last}
    return {"metadata": {"name": name, "namespace": "ptr"}, "status": {"containerStatuses": [status]}}


def test_failure_names_each_replicas_reason_exit_code_and_last_log_lines():
    """Item 9. The operator deletes a failed job's pods before it marks the job Failed, whatever
    cleanPodPolicy says (training-operator v1.9 pkg/controller.v1/common/job.go: ReconcileJobs calls
    DeletePodsAndServices while the status is not yet Failed). So the step records each replica's
    termination while the job runs, and its error carries them after the pods are gone."""
    fake = FakeKube()
    running = {"conditions": [_cond("Running")]}
    failed = {"conditions": [_cond("Running"), _cond("Failed", "PyTorchJobFailed", "backoff limit reached")]}
    _existing(fake, [running, running, running, failed])
    fake.pods = [
        [_pod("ptr-train-x-master-0"), _pod("ptr-train-x-worker-0")],
        [
            _pod("ptr-train-x-master-0", last={"exitCode": 137, "reason": "OOMKilled"}, restarts=1),
            _pod("ptr-train-x-worker-0"),
        ],
        [
            _pod("ptr-train-x-master-0", last={"exitCode": 137, "reason": "OOMKilled"}, restarts=1),
            _pod(
                "ptr-train-x-worker-0", terminated={"exitCode": 1, "reason": "Error", "message": "Traceback"}
            ),
        ],
        [],  # the operator deleted the pods
    ]
    fake.logs = {
        "ptr-train-x-master-0": "step 40\nstep 41\n",
        "ptr-train-x-worker-0": "\n".join(f"line {i}" for i in range(100)) + "\nValueError: bad shard",
    }
    lines = []
    with pytest.raises(PtrError) as err:
        pytorchjob.wait(_client(fake), "ptr-train-x", "ptr", timeout=60, poll=0, report=lines.append)
    message = str(err.value)
    assert message.startswith("PyTorchJob ptr/ptr-train-x failed: PyTorchJobFailed: backoff limit reached")
    assert "ptr-train-x-master-0: OOMKilled (exit code 137)" in message and "step 41" in message
    assert "ptr-train-x-worker-0: Error (exit code 1): Traceback" in message
    assert "ValueError: bad shard" in message and "line 50" not in message  # only the last lines
    assert sum("replica failed" in line for line in lines) == 2  # each failure reported once, as it happens
    pod_lists = [c for c in fake.calls if c[1] == "pods" and c[0] == "list"]
    assert pod_lists and pod_lists[0][3] == "training.kubeflow.org/job-name=ptr-train-x"


def test_wait_survives_a_flaky_api_server_and_treats_only_404_as_gone():
    """Item 10: 5xx and timeouts during a multi-hour wait are retried with backoff; 403 is an answer."""
    fake = FakeKube()
    _existing(fake, [{"conditions": [_cond("Running")]}, {"conditions": [_cond("Succeeded")]}])
    fake.errors["get_namespaced_custom_object"] = [
        api_error(503),
        api_error(500),
        TimeoutError("read timed out"),
    ]
    assert pytorchjob.wait(_client(fake), "ptr-train-x", "ptr", timeout=60, poll=0, report=lambda _: None)
    assert sum(1 for c in fake.calls if c[0] == "get") >= 5

    fake = FakeKube()
    with pytest.raises(PtrError, match="is gone"):
        pytorchjob.wait(_client(fake), "ptr-train-x", "ptr", timeout=60, poll=0, report=lambda _: None)

    fake = FakeKube()
    _existing(fake, [{"conditions": [_cond("Running")]}])
    fake.errors["get_namespaced_custom_object"] = [api_error(403)]
    with pytest.raises(RuntimeError, match="403"):
        pytorchjob.wait(_client(fake), "ptr-train-x", "ptr", timeout=60, poll=0, report=lambda _: None)


def test_wait_times_out_with_the_last_state():
    fake = FakeKube()
    _existing(fake, [{"conditions": [_cond("Running")]}])
    with pytest.raises(PtrError, match="did not finish within 0s .last state Running"):
        pytorchjob.wait(_client(fake), "ptr-train-x", "ptr", timeout=0, poll=0, report=lambda _: None)


def _statuses_after_create(fake, name, statuses):
    original = fake.create_namespaced_custom_object

    def create(*args, **kw):
        obj = original(*args, **kw)
        fake.statuses[("kubeflow.org", "pytorchjobs", "ptr", name)] = list(statuses)
        return obj

    fake.create_namespaced_custom_object = create


@pytest.mark.parametrize("outcome", ["failed", "timeout", "terminated"])
def test_a_job_whose_step_ends_badly_is_deleted(outcome):
    """Item 11: a failed, timed-out or terminated (SIGTERM: KFP stops the run) step deletes its
    PyTorchJob, so no replica keeps holding GPUs; success is left to ttlSecondsAfterFinished."""
    import os
    import signal

    run, train = _config()
    _, job = _job(run, train)
    name = job.metadata.name
    fake = FakeKube()
    state = {
        "failed": [{"conditions": [_cond("Failed", "PyTorchJobFailed")]}],
        "timeout": [{"conditions": [_cond("Running")]}],
        "terminated": [{"conditions": [_cond("Running")]}],
    }[outcome]
    _statuses_after_create(fake, name, state)

    def report(line):
        if outcome == "terminated":
            os.kill(os.getpid(), signal.SIGTERM)

    expected = pytorchjob.Terminated if outcome == "terminated" else PtrError
    with pytest.raises(expected):
        pytorchjob.run(job, _client(fake), timeout=0 if outcome == "timeout" else 60, poll=0, report=report)
    assert ("delete", "pytorchjobs", "ptr", name) in fake.calls and not fake.custom
    assert signal.getsignal(signal.SIGTERM) is not None  # the handler is put back

    fake = FakeKube()
    _statuses_after_create(fake, name, [{"conditions": [_cond("Succeeded")]}])
    assert pytorchjob.run(job, _client(fake), timeout=60, poll=0, report=lambda _: None) == "Succeeded"
    assert not [c for c in fake.calls if c[0] == "delete"]


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
