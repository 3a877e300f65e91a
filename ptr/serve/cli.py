"""`ptr serve`: the refining model behind KServe's ModelServer (V1, V2, health, /metrics, OpenAI routes).

    ptr serve --model_path smollm2-135m-instruct --model_name ptr --host 127.0.0.1 --port 8080

Endpoints (``{name}`` is ``--model_name``):
  POST /v1/models/{name}:predict      {"instances": [...], "parameters": {"rounds": R, ...}}
  POST /v2/models/{name}/infer        the same request, JSON-encoded, as the BYTES input "request"
  GET  /v2/models/{name}              model metadata; /v2/health/live, /v2/health/ready, /v1/models/{name}
  GET  /metrics                       Prometheus (KServe's, plus ptr_serve_batch_size)
  POST /openai/v1/chat/completions    OpenAI-compatible (also /openai/v1/completions, /openai/v1/models)
"""

from __future__ import annotations

import argparse
import sys

from ptr.errors import PtrError, cli_errors
from ptr.inference import LOCAL_BACKENDS
from ptr.inference.cli import add_engine_memory_args
from ptr.models import resolve
from ptr.serve import openai_routes
from ptr.serve.kserve_model import RefiningModel
from ptr.serve.schema import Limits


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ptr serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model_path", required=True, help="model reference (see ptr.models), s3:// or pvc://")
    p.add_argument("--model_name", default="ptr", help="the name on the endpoint paths")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--grpc_port", type=int, default=0, help="also serve KServe's gRPC V2 here (0 = off)")
    p.add_argument("--backend", choices=LOCAL_BACKENDS, default="transformers")
    p.add_argument("--dtype", default="auto", help="auto, float32 or bfloat16")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads for generation (0 = torch's default, one per core)",
    )
    add_engine_memory_args(p)
    p.add_argument(
        "--max_batch_size",
        type=int,
        default=16,
        help="generations gathered into one call (vllm: its engine batches continuously instead)",
    )
    p.add_argument("--max_wait_ms", type=float, default=10.0, help="how long a batch waits to fill")
    p.add_argument("--max_rounds", type=int, default=8, help="most refinement rounds one request may ask")
    p.add_argument("--max_instances", type=int, default=64, help="most instances in one request")
    p.add_argument("--max_new_tokens_limit", type=int, default=2048, help="most new tokens per round")
    p.add_argument(
        "--refine_prompt",
        help="default refine turn, for requests that send none (default: the one the model was trained "
        "with, from its ptr_train.json, else the paper's)",
    )
    return p


def _check(args) -> None:
    for name in ("max_batch_size", "max_rounds", "max_instances", "max_new_tokens_limit"):
        if getattr(args, name) < 1:
            raise PtrError(f"--{name} must be >= 1")
    if args.threads < 0:
        raise PtrError("--threads must be >= 0 (0 = torch's default)")
    if args.max_wait_ms < 0:
        raise PtrError("--max_wait_ms must be >= 0")
    if not 0 < args.port < 65536 or not 0 <= args.grpc_port < 65536:
        raise PtrError("--port and --grpc_port must be in 1..65535 (--grpc_port 0 turns gRPC off)")


def _import_kserve():
    """KServe parses ``sys.argv`` when ``kserve.model_server`` is imported; hide ours from it."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        import kserve  # noqa: F401
        import kserve.model_server
    finally:
        sys.argv = saved
    return kserve


def build_server(args):
    """The loaded model and a ModelServer ready to ``start([model])`` (split out for tests)."""
    kserve = _import_kserve()

    class ModelServer(kserve.ModelServer):
        """KServe's server, listening on ``host`` (KServe binds 0.0.0.0 unconditionally)."""

        def __init__(self, host: str, **kwargs):
            super().__init__(**kwargs)
            self.host = host

        def setup_event_loop(self):  # runs after start() built the REST server, before it binds
            if self._rest_server is not None:
                self._rest_server.config.host = self.host
            super().setup_event_loop()

    model = RefiningModel(
        args.model_name,
        args.model_path,
        backend=args.backend,
        dtype=args.dtype,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        limits=Limits(
            max_rounds=args.max_rounds,
            max_instances=args.max_instances,
            max_new_tokens=args.max_new_tokens_limit,
        ),
        refine_prompt=args.refine_prompt,
        threads=args.threads,
        kv_cache_gib=args.kv_cache_gib,
        gpu_memory_share=args.gpu_memory_share,
    )
    model.load()
    openai_routes.register(kserve.model_server.app, model)
    server = ModelServer(
        args.host,
        http_port=args.port,
        grpc_port=args.grpc_port or 8081,
        enable_grpc=bool(args.grpc_port),
        workers=1,  # one process owns the model; concurrency comes from batching
    )
    return model, server


@cli_errors
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _check(args)
    ref = args.model_path
    args.model_path = resolve(ref)  # a bad reference (or a failed download) exits 2 here, fast
    model, server = build_server(args)
    print(
        f"ptr serve: {ref} as {args.model_name!r} on http://{args.host}:{args.port} "
        f"(backend {args.backend}, batches of up to {args.max_batch_size})",
        file=sys.stderr,
        flush=True,
    )
    server.start([model])
    return 0
