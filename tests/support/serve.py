"""Start `ptr serve` on a free 127.0.0.1 port for tests and benchmarks; stop it by its pid."""

from __future__ import annotations

import contextlib
from pathlib import Path

from tests.support.procs import free_port, start, stop, wait_http


@contextlib.contextmanager
def ptr_server(model: str = "tiny-random", *extra: str, log: Path | None = None, timeout: float = 300):
    """Yields the base URL (``http://127.0.0.1:PORT``) once the model reports ready."""
    port = free_port()
    proc = start(
        ["-m", "ptr", "serve", "--model_path", model, "--port", str(port), *map(str, extra)],
        log=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http(f"{url}/v2/health/ready", timeout=timeout, proc=proc)
        except (RuntimeError, TimeoutError) as err:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{err}\n{tail}") from None
        yield url
    finally:
        stop(proc, timeout=30)


def batch_metrics(url: str) -> tuple[float, float]:
    """``(generate calls, generations)`` so far, from the server's ``ptr_serve_batch_size`` histogram."""
    import httpx

    count = total = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("ptr_serve_batch_size_count"):
            count = float(line.split()[-1])
        elif line.startswith("ptr_serve_batch_size_sum"):
            total = float(line.split()[-1])
    return count, total
