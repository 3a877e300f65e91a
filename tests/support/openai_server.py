"""A small OpenAI-compatible server for tests: /v1/models, /v1/chat/completions, /v1/completions,
backed by the transformers backend. ``--fail_first N`` answers the first N generation requests with
HTTP 503, to exercise client retries. ``--leak_turn_end`` plays a server that returns special tokens as
text and ignores stop strings: every answer goes on past ``<|im_end|>`` into an invented turn.
``POST /mode`` with ``{"fail_first": N, "leak_turn_end": bool}`` sets both while it runs, so one server
(one model load) serves a module's tests, each in the mode it needs.

    python -m tests.support.openai_server --model tiny-random --port 8123
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ptr.inference import SamplingParams
from ptr.inference.hf import TransformersBackend


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--served_name", default="test-model")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--fail_first", type=int, default=0)
    ap.add_argument("--leak_turn_end", action="store_true")
    args = ap.parse_args()

    backend = TransformersBackend(args.model, dtype="float32")
    lock = threading.Lock()
    state = {"failures_left": args.fail_first, "requests": 0, "leak_turn_end": args.leak_turn_end}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, code, obj):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/v1/models":
                return self._send(
                    200, {"object": "list", "data": [{"id": args.served_name, "object": "model"}]}
                )
            if self.path == "/stats":
                return self._send(200, state)
            self._send(404, {"error": "not found"})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/mode":
                with lock:
                    state["failures_left"] = int(body.get("fail_first", 0))
                    state["leak_turn_end"] = bool(body.get("leak_turn_end", False))
                return self._send(200, state)
            with lock:
                leak = state["leak_turn_end"]
                state["requests"] += 1
                if state["failures_left"] > 0:
                    state["failures_left"] -= 1
                    return self._send(503, {"error": "warming up"})
            params = SamplingParams(
                max_new_tokens=body.get("max_tokens", 16),
                temperature=body.get("temperature", 0.0),
                top_p=body.get("top_p", 1.0),
                top_k=body.get("top_k", 0),
                seed=body.get("seed"),
                stop=() if leak else tuple(body.get("stop") or ()),
            )
            if self.path == "/v1/chat/completions":
                conv = body["messages"]
            elif self.path == "/v1/completions":
                conv = body["prompt"]
            else:
                return self._send(404, {"error": "not found"})
            with lock:  # one generation at a time: the model is not shared across threads
                out = backend.generate([conv], params)[0]
            if leak:
                out.text += "<|im_end|>\n<|im_start|>user\nAn invented turn."
            choice = {"index": 0, "finish_reason": out.finish_reason}
            if isinstance(conv, str):
                choice["text"] = out.text
            else:
                choice["message"] = {"role": "assistant", "content": out.text}
            self._send(
                200,
                {
                    "id": "cmpl-test",
                    "model": args.served_name,
                    "choices": [choice],
                    "usage": {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens},
                },
            )

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
