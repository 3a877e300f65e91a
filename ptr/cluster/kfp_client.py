"""Talking to Kubeflow Pipelines: who the client is, which namespace runs go to, where a run shows.

The one module of ``ptr`` that imports the KFP SDK's client (``pipelines/run.py`` submits through it,
``ptr cluster check`` asks through it whether KFP answers).

Credentials, first found wins:

* ``KF_PIPELINES_TOKEN``: a bearer token (an OIDC token, or ``kubectl create token`` for a service
  account that Kubeflow's oauth2-proxy or the KFP API server accepts);
* ``KF_PIPELINES_COOKIE``: the session cookie of a Dex/oauth2-proxy login, as the browser holds it
  (``oauth2_proxy_kubeflow=…`` or ``authservice_session=…``);
* inside a pod: the projected service-account token KFP reads (``KF_PIPELINES_SA_TOKEN_PATH``,
  default ``/var/run/secrets/kubeflow/pipelines/token``);
* none: an unauthenticated endpoint (standalone KFP reached through ``kubectl port-forward``).

Modes: in multi-user KFP every run belongs to a profile namespace (the config's
``run.cluster.namespace``; ``KFP_NAMESPACE``, when set, must name the same one); standalone KFP runs
everything in its own namespace and takes none.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from ptr.errors import PtrError

TOKEN_ENV = "KF_PIPELINES_TOKEN"
COOKIE_ENV = "KF_PIPELINES_COOKIE"
SA_TOKEN_ENV = "KF_PIPELINES_SA_TOKEN_PATH"  # kfp.client's own variable and default path
SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
UI_ENV = "KF_PIPELINES_UI_ENDPOINT"  # kfp.client's variable for the UI's address
MODES = ("multi-user", "standalone")


def credentials(env: dict[str, str] | None = None) -> tuple[str, dict]:
    """(which credential, keyword arguments for ``kfp.Client``) from the environment."""
    env = dict(os.environ if env is None else env)
    if env.get(TOKEN_ENV):
        return TOKEN_ENV, {"existing_token": env[TOKEN_ENV]}
    if env.get(COOKIE_ENV):
        return COOKIE_ENV, {"cookies": env[COOKIE_ENV]}
    path = env.get(SA_TOKEN_ENV) or SA_TOKEN_PATH
    if Path(path).is_file():
        from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials  # heavy: kfp

        return f"service-account token {path}", {"credentials": ServiceAccountTokenVolumeCredentials(path)}
    return "none", {}


def run_namespace(mode: str, namespace: str, env: dict[str, str] | None = None) -> str | None:
    """The namespace runs are submitted to (None in standalone mode)."""
    env = dict(os.environ if env is None else env)
    asked = env.get("KFP_NAMESPACE") or None
    if mode == "standalone":
        if asked and asked != namespace:
            raise PtrError(
                f"KFP_NAMESPACE={asked} but run.cluster.kfp_mode is standalone: runs execute in KFP's own "
                f"namespace ({namespace}); unset KFP_NAMESPACE or set kfp_mode: multi-user"
            )
        return None
    if asked and asked != namespace:
        raise PtrError(
            f"KFP_NAMESPACE={asked} but run.cluster.namespace is {namespace}: the run's steps create their "
            "PyTorchJob and InferenceServices in the namespace they run in, so both must name one namespace"
        )
    return namespace


def connect(host: str, *, mode: str, namespace: str, env: dict[str, str] | None = None):
    """A ``kfp.Client`` for ``host`` with the credentials the environment gives."""
    import kfp  # heavy: only when talking to KFP

    _, auth = credentials(env)
    run_ns = run_namespace(mode, namespace, env)
    # kfp.Client treats namespace="kubeflow" as "not given"; pass it only for multi-user
    return kfp.Client(host=host, **({"namespace": run_ns} if run_ns else {}), **auth)


def run_url(host: str, run_id: str, *, mode: str, namespace: str, env: dict[str, str] | None = None) -> str:
    """Where the run shows in a browser. Standalone KFP serves its UI where its API is; in a Kubeflow
    platform (multi-user) the API is ``<platform>/pipeline`` and the UI sits in the central dashboard at
    ``<platform>/_/pipeline/?ns=<namespace>``. ``KF_PIPELINES_UI_ENDPOINT`` overrides the UI's base."""
    env = dict(os.environ if env is None else env)
    base = (env.get(UI_ENV) or host).rstrip("/")
    if mode == "multi-user" and not env.get(UI_ENV) and base.endswith("/pipeline"):
        return f"{base.removesuffix('/pipeline')}/_/pipeline/?ns={quote(namespace)}#/runs/details/{run_id}"
    return f"{base}/#/runs/details/{run_id}"
