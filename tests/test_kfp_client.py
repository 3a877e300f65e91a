"""Who the KFP client is, which namespace runs go to and where a run shows (items 3 and 4). No KFP API
server can run here: the kfp.Client built is inspected (its kfp_server_api configuration and the
headers it would send), and a local HTTP server records what a call sends.

Encodes kfp 2.17's client (kfp/client/client.py: ``existing_token`` becomes an ``authorization: Bearer``
API key, ``cookies`` a Cookie header, ``credentials`` a refresh hook; namespace ``kubeflow`` means none)
and the Kubeflow central dashboard's link to a run (``/_/pipeline/?ns=<namespace>#/runs/details/<id>``).
"""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from ptr.cluster import kfp_client
from ptr.errors import PtrError


def test_credentials_come_from_the_environment_in_order(tmp_path):
    assert kfp_client.credentials({"KF_PIPELINES_TOKEN": "t", "KF_PIPELINES_COOKIE": "c=1"}) == (
        "KF_PIPELINES_TOKEN",
        {"existing_token": "t"},
    )
    assert kfp_client.credentials({"KF_PIPELINES_COOKIE": "oauth2_proxy_kubeflow=abc"}) == (
        "KF_PIPELINES_COOKIE",
        {"cookies": "oauth2_proxy_kubeflow=abc"},
    )
    token = tmp_path / "token"
    token.write_text("sa-token")
    how, kwargs = kfp_client.credentials({"KF_PIPELINES_SA_TOKEN_PATH": str(token)})
    assert how == f"service-account token {token}" and kwargs["credentials"]._get_token() == "sa-token"
    assert kfp_client.credentials({"KF_PIPELINES_SA_TOKEN_PATH": str(tmp_path / "absent")}) == ("none", {})


def test_namespace_by_mode():
    assert kfp_client.run_namespace("multi-user", "ptr", {}) == "ptr"
    assert kfp_client.run_namespace("multi-user", "ptr", {"KFP_NAMESPACE": "ptr"}) == "ptr"
    with pytest.raises(PtrError, match="KFP_NAMESPACE=team-a but run.cluster.namespace is ptr"):
        kfp_client.run_namespace("multi-user", "ptr", {"KFP_NAMESPACE": "team-a"})
    assert kfp_client.run_namespace("standalone", "kubeflow", {}) is None
    with pytest.raises(PtrError, match="standalone"):
        kfp_client.run_namespace("standalone", "kubeflow", {"KFP_NAMESPACE": "ptr"})


def test_run_url_for_both_modes():
    multi = kfp_client.run_url(
        "https://kubeflow.example.com/pipeline", "r1", mode="multi-user", namespace="ptr", env={}
    )
    assert multi == "https://kubeflow.example.com/_/pipeline/?ns=ptr#/runs/details/r1"
    standalone = kfp_client.run_url(
        "http://127.0.0.1:8080/", "r1", mode="standalone", namespace="kubeflow", env={}
    )
    assert standalone == "http://127.0.0.1:8080/#/runs/details/r1"
    ui = kfp_client.run_url(
        "http://ml-pipeline.kubeflow:8888",
        "r1",
        mode="multi-user",
        namespace="ptr",
        env={"KF_PIPELINES_UI_ENDPOINT": "https://kfp-ui.example.com"},
    )
    assert ui == "https://kfp-ui.example.com/#/runs/details/r1"


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[dict] = []

    def do_GET(self):  # noqa: N802
        type(self).seen.append(
            {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
        )
        body = json.dumps({"experiments": [], "total_size": 0}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def kfp_server():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    _Recorder.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.seen
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("env", "header", "value"),
    [
        ({"KF_PIPELINES_TOKEN": "tok"}, "Authorization", "Bearer tok"),
        ({"KF_PIPELINES_COOKIE": "oauth2_proxy_kubeflow=abc"}, "Cookie", "oauth2_proxy_kubeflow=abc"),
    ],
)
def test_the_client_sends_the_credentials_and_namespace(
    kfp_server, env, header, value, monkeypatch, tmp_path
):
    """Item 4: a real kfp.Client, talking to a local HTTP server that records the request."""
    monkeypatch.setenv("HOME", str(tmp_path))  # kfp reads ~/.config/kfp/context.json
    host, seen = kfp_server
    env = {**env, "KF_PIPELINES_SA_TOKEN_PATH": str(tmp_path / "none")}
    client = kfp_client.connect(host, mode="multi-user", namespace="ptr", env=env)
    client.list_experiments(page_size=1, namespace="ptr")
    (request,) = seen
    assert request["headers"].get(header.lower()) == value
    assert "namespace=ptr" in request["path"]
