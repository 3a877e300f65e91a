"""JSON over HTTP with a timeout and retries, for the backends that talk to a served model."""

from __future__ import annotations

import random
import time

import httpx

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class EndpointError(RuntimeError):
    """A served model did not answer, or refused the request; the message says which and why."""


def _reason(resp) -> str:
    try:
        body = resp.json()
        if isinstance(body, dict) and "error" in body:
            return str(body["error"])
    except ValueError:
        pass
    return resp.text[:500]


class JsonClient:
    """``request(method, path, body) -> dict``: retries with exponential backoff and jitter on connection
    errors, timeouts, 429 and 5xx; any other 4xx fails at once with the server's reason."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        max_retries: int = 4,
        backoff: float = 0.5,
        headers: dict | None = None,
        connections: int | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.max_retries, self.backoff = max_retries, backoff
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self.client = httpx.Client(timeout=timeout, headers=headers or {}, limits=limits)

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        url = self.base_url + path
        for attempt in range(self.max_retries + 1):
            try:
                resp = self.client.request(method, url, json=body)
                if resp.status_code < 400:
                    return resp.json()
                if resp.status_code not in RETRY_STATUS or attempt == self.max_retries:
                    raise EndpointError(f"{method} {url}: HTTP {resp.status_code}: {_reason(resp)}")
            except (httpx.TransportError, httpx.TimeoutException) as err:
                if attempt == self.max_retries:
                    raise EndpointError(f"{method} {url}: {type(err).__name__}: {err}") from err
            time.sleep(self.backoff * (2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.client.close()
