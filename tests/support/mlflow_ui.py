"""MLflow's web UI in a real browser: headless Chromium driven over the DevTools protocol.

Used by the pipeline test (what an experiment opens on, what the runs table shows) and to take the
report's screenshot of the runs table:

    python -m tests.support.mlflow_ui --tracking_uri sqlite:///…/mlflow.db --experiment NAME \\
        --columns metrics.candidate.mmlu.round2 params.train.layout … --out runs.png

The runs table's visible columns are the UI's own state in the browser's localStorage (MLflow 3.17:
``MLflowLocalStorage-1.1-ExperimentPage-["<id>"]-ReactComponentState``, ``selectedColumns`` holding
keys such as ``metrics.`name```); they are set there, as a user's column choice would be.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from ptr.procs import free_port


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One headless Chromium page: navigate, evaluate JavaScript, capture a screenshot."""

    def __init__(self, width: int = 1700, height: int = 800):
        import websocket  # websocket-client, an MLflow dependency

        self.profile = tempfile.mkdtemp(prefix="ptr-chromium-")
        port = free_port()
        self.proc = subprocess.Popen(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
            + [f"--remote-debugging-port={port}", f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        page = None
        for _ in range(200):
            with contextlib.suppress(OSError, ValueError, StopIteration):
                tabs = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=2))
                page = next(t for t in tabs if t["type"] == "page")
                break
            time.sleep(0.2)
        if page is None:
            self.close()
            raise RuntimeError("chromium did not open its DevTools port")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=120)
        self.n = 0
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def call(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.n:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result") or {}

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    def open(self, url: str | None, until: str, timeout: float = 60.0) -> str:
        """Navigate (``url`` None: reload the page) and wait until the page's text contains ``until``;
        returns the text."""
        if url is None:
            self.call("Page.reload", ignoreCache=True)
        else:
            self.call("Page.navigate", url=url)
        deadline, text = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            text = self.js("document.body ? document.body.innerText : ''") or ""
            if until in text:
                time.sleep(1.0)  # let the table finish drawing
                return self.js("document.body.innerText") or ""
            time.sleep(0.5)
        raise TimeoutError(f"{url}: no {until!r} on the page within {timeout:.0f}s; it shows: {text[:500]!r}")

    def screenshot(self, path: str | Path) -> None:
        Path(path).write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(tracking_uri: str):
    """``mlflow server`` over a store, on a free loopback port; yields its URL and stops it."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri]
        + ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with status {proc.returncode}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)


def show_columns(browser: Browser, experiment_id: str, columns: list[str]) -> None:
    """Choose the runs table's columns (``metrics.name``, ``params.name``) as a user would, and close
    the assistant panel; takes effect on the next page load."""
    key = f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment_id}"]-ReactComponentState'
    saved = None
    for _ in range(60):  # the page saves its state shortly after it loads
        saved = browser.js(f"localStorage.getItem({json.dumps(key)})")
        if saved:
            break
        time.sleep(0.5)
    state = json.loads(saved or "{}")
    state["selectedColumns"] = [f"{kind}.`{name}`" for kind, _, name in (c.partition(".") for c in columns)]
    browser.js(f"localStorage.setItem({json.dumps(key)}, {json.dumps(json.dumps(state))})")
    browser.js("localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false')")


def wait_for_rows(browser: Browser, timeout: float = 120.0) -> None:
    """Until the runs table has drawn its rows: the header comes first, and on a store with many runs
    the rows follow seconds later ("0 matching runs" and a spinner meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(r"\b[1-9][0-9]* matching runs", browser.js("document.body.innerText") or ""):
            time.sleep(1.0)
            return
        time.sleep(0.5)
    raise TimeoutError(f"the runs table drew no rows within {timeout:.0f}s")


def runs_page(base_url: str, experiment_id: str) -> str:
    """The experiment's runs: MLflow 3.17 opens an experiment by the UI's workflow switch (GenAI by
    default, kept in the browser), so the link says ``workflowType=machine_learning``."""
    return f"{base_url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.mlflow_ui", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--tracking_uri", required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--columns", nargs="+", default=[], help="metrics.NAME or params.NAME to show")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--width", type=int, default=1800)
    parser.add_argument("--height", type=int, default=520)
    args = parser.parse_args(argv)
    from mlflow import MlflowClient

    experiment = MlflowClient(tracking_uri=args.tracking_uri).get_experiment_by_name(args.experiment)
    with mlflow_server(args.tracking_uri) as url:
        browser = Browser(args.width, args.height)
        try:
            page = runs_page(url, experiment.experiment_id)
            browser.open(page, until="Run Name")
            show_columns(browser, experiment.experiment_id, args.columns)
            browser.open(None, until="Run Name")
            wait_for_rows(browser)
            browser.js("document.querySelector('[aria-label=\"Close\"]')?.click()")
            time.sleep(1)
            browser.screenshot(args.out)
        finally:
            browser.close()
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
