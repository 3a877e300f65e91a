"""The Kubernetes API as the cluster steps use it: clients from the pod's service account (or a
kubeconfig context), and calls that outlive a bad moment of the API server.

A multi-hour wait polls the API server thousands of times; a restart of the server, a 503 from an
overloaded one or a dropped connection must not fail the step. :func:`retrying` retries exactly those
(5xx, 429, timeouts, connection errors) with exponential backoff; every other answer — 404 above all,
which means the object is gone — reaches the caller at once.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

RETRYABLE_STATUS = {0, 429, 500, 502, 503, 504}


def load(context: str | None = None):
    """Configure the kubernetes client: in a pod its service account, else ~/.kube/config (at
    ``context`` when given). Returns the ApiClient."""
    from kubernetes import client, config  # heavy: only on a cluster path

    if context is None:
        try:
            config.load_incluster_config()
            return client.ApiClient()
        except config.ConfigException:
            pass
    config.load_kube_config(context=context)
    return client.ApiClient()


def api_exception(err: BaseException | None):
    """The ApiException behind an error (the kubeflow-training SDK wraps them in RuntimeError)."""
    from kubernetes.client.exceptions import ApiException

    while err is not None:
        if isinstance(err, ApiException):
            return err
        err = err.__cause__ or err.__context__
    return None


def status(err: BaseException) -> int | None:
    api = api_exception(err)
    return api.status if api is not None else None


def gone(err: BaseException) -> bool:
    return status(err) == 404


def transient(err: BaseException) -> bool:
    """The API server's bad moment, not an answer: 5xx, 429, timeouts, dropped connections."""
    code = status(err)
    if code is not None:
        return code in RETRYABLE_STATUS
    if isinstance(err, TimeoutError | ConnectionError):
        return True
    # urllib3's MaxRetryError/ProtocolError, or the SDK's bare "Failed to get ..." around one
    names = {type(e).__name__ for e in (err, err.__cause__, err.__context__) if e is not None}
    return bool(names & {"MaxRetryError", "ProtocolError", "NewConnectionError", "ReadTimeoutError"}) or (
        isinstance(err, RuntimeError) and err.__cause__ is None and err.__context__ is not None
    )


def retrying(call: Callable, *, what: str, attempts: int = 10, delay: float = 2.0, max_delay: float = 60.0):
    """``call()``, retried with exponential backoff (2 s, 4 s, … up to a minute; about seven minutes
    in all) while the failure is transient; anything else propagates at once."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as err:  # noqa: BLE001 — classified just below
            if not transient(err) or attempt == attempts - 1:
                raise
            pause = min(max_delay, delay * 2**attempt)
            print(
                f"{what}: {type(err).__name__}: {err} — retrying in {pause:.0f}s", file=sys.stderr, flush=True
            )
            time.sleep(pause)
    raise AssertionError("unreachable")
