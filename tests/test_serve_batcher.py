"""The dynamic batcher and the KServe model in-process (no HTTP): batching, prefix reuse across
changing batches, failures that stay with their own job, and pvc:// model references."""

import asyncio
import os

import pytest

from ptr.inference import Backend, PrefixSession, SamplingParams, refine
from ptr.serve.batcher import DynamicBatcher
from ptr.serve.schema import RequestError

PARAMS = SamplingParams(max_new_tokens=5)


def chat(text):
    return [{"role": "user", "content": text}]


def texts(results):
    return [[c.text for c in r] for r in results]


def test_concurrent_refines_are_batched_and_match_local(tiny_backend):
    convs = [chat(f"What is {i} times 3?") for i in range(6)] + ["Question: 1+1?\nAnswer:"]
    batcher = DynamicBatcher(tiny_backend, max_batch_size=4, max_wait_ms=20)
    calls = []
    real = tiny_backend.generate

    def spy(conversations, params, **kw):
        calls.append((len(conversations), kw.get("session")))
        return real(conversations, params, **kw)

    async def main():
        # one request per conversation, all at once, as concurrent HTTP clients would send them
        return await asyncio.gather(*(batcher.refine([c], 3, PARAMS, "Refine.") for c in convs))

    tiny_backend.generate = spy
    try:
        results = asyncio.run(main())
    finally:
        tiny_backend.generate = real
    refined = [r[0] for r in results]
    # the request's refine prompt is the one used between rounds
    assert texts(refined) == texts(refine(tiny_backend, convs, 3, PARAMS, refine_prompt="Refine."))
    assert sum(n for n, _ in calls) == 7 * 3
    assert max(n for n, _ in calls) == 4  # full batches
    # one session for the server, caches kept under each conversation's key and dropped when it is over
    assert all(isinstance(session, PrefixSession) and session is batcher.session for _, session in calls)
    assert len(batcher.session) == 0
    assert batcher.largest_batch == 4


def test_prefix_reuse_keeps_outputs_identical(tiny_backend):
    convs = [chat("Name three colours."), chat("Count to five.")]
    no_reuse_backend = type(tiny_backend)(
        model=tiny_backend.model, tokenizer=tiny_backend.tokenizer, prefix_reuse=False
    )
    with_reuse = DynamicBatcher(tiny_backend, max_batch_size=2)
    without = DynamicBatcher(no_reuse_backend, max_batch_size=2)
    assert with_reuse.reuse_prefix and not without.reuse_prefix
    a = asyncio.run(with_reuse.refine(convs, 3, PARAMS, "Again."))
    b = asyncio.run(without.refine(convs, 3, PARAMS, "Again."))
    assert texts(a) == texts(b)


def test_overlong_job_fails_alone_and_batch_goes_on(tiny_backend):
    long = "one two three " * 1000
    batcher = DynamicBatcher(tiny_backend, max_batch_size=8, max_wait_ms=50)

    async def main():
        return await asyncio.gather(
            batcher.refine([chat("short")], 1, PARAMS, "r"),
            batcher.refine([long], 1, PARAMS, "r"),
            batcher.refine(["Question: ok?\nAnswer:"], 1, PARAMS, "r"),
            return_exceptions=True,
        )

    ok1, bad, ok2 = asyncio.run(main())
    assert isinstance(bad, RequestError) and "instances[0]: round 1:" in str(bad) and "context" in str(bad)
    assert ok1[0][0].completion_tokens > 0 and ok2[0][0].completion_tokens > 0


def test_backend_failure_reaches_its_jobs_only(tiny_backend):
    class Flaky(Backend):
        name = "flaky"

        def __init__(self):
            self.calls = 0

        @classmethod
        def from_options(cls, model_ref, options):
            return cls()

        def generate(self, conversations, params, **_):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("device lost")
            return tiny_backend.generate(conversations, params)

    batcher = DynamicBatcher(Flaky(), max_batch_size=4)

    async def main():
        with pytest.raises(RuntimeError, match="device lost"):
            await batcher.refine([chat("a")], 1, PARAMS, "r")
        return await batcher.refine([chat("a")], 2, PARAMS, "r")  # the batcher is still running

    assert len(asyncio.run(main())[0]) == 2


def test_model_loads_pvc_reference_and_predicts(tmp_path, tiny_path, monkeypatch):
    import ptr.storage
    from ptr.serve.kserve_model import RefiningModel

    (tmp_path / "models-claim").mkdir()
    os.symlink(tiny_path, tmp_path / "models-claim" / "tiny")
    monkeypatch.setattr(ptr.storage, "PVC_ROOT", str(tmp_path))
    model = RefiningModel("ptr", "pvc://models-claim/tiny", dtype="float32")
    assert model.load() and model.ready
    body = {"instances": [{"messages": chat("hi")}], "parameters": {"rounds": 2, "max_new_tokens": 3}}
    out = asyncio.run(model.predict(body))
    assert [r["round"] for r in out["predictions"][0]["rounds"]] == [1, 2]

    from kserve.errors import InvalidInput

    with pytest.raises(InvalidInput, match="rounds"):
        asyncio.run(model.predict({"instances": [{"prompt": "x"}], "parameters": {"rounds": 0}}))
    missing = RefiningModel("ptr", "pvc://models-claim/absent")
    with pytest.raises(Exception, match="does not exist"):
        missing.load()


def test_model_loads_s3_reference_from_real_store(s3_store, tmp_path, tiny_path, monkeypatch):
    """s3:// through ptr.storage against SeaweedFS on 127.0.0.1 (the session's store)."""
    from ptr import storage
    from ptr.serve.kserve_model import RefiningModel

    monkeypatch.setenv("PTR_CACHE", str(tmp_path / "cache"))
    storage.publish(tiny_path, "s3://ptr/models/tiny")
    model = RefiningModel("ptr", "s3://ptr/models/tiny", dtype="float32")
    assert model.load()
    body = {
        "instances": [{"prompt": "Question: 1+1?\nAnswer:"}],
        "parameters": {"rounds": 2, "max_new_tokens": 3},
    }
    out = asyncio.run(model.predict(body))
    assert len(out["predictions"][0]["rounds"]) == 2


def test_a_streaming_request_shares_its_batch_with_a_plain_one(tiny_backend):
    """Streaming is per job: the batch runs through generate_stream, only the streaming request gets
    pieces (labelled instance and round), and both get the text they get alone."""
    batcher = DynamicBatcher(tiny_backend, max_batch_size=4, max_wait_ms=50)
    convs = [chat("Name three colours."), chat("Count to five.")]
    pieces = []
    calls = []
    real = tiny_backend.generate_stream

    def spy(conversations, params, on_text, **kw):
        calls.append(len(conversations))
        return real(conversations, params, on_text, **kw)

    async def main():
        streamed = batcher.refine([convs[0]], 2, PARAMS, "Refine.", on_text=lambda *e: pieces.append(e))
        return await asyncio.gather(streamed, batcher.refine([convs[1]], 2, PARAMS, "Refine."))

    tiny_backend.generate_stream = spy
    try:
        (streamed,), (plain,) = asyncio.run(main())
    finally:
        del tiny_backend.generate_stream
    alone = refine(tiny_backend, convs, 2, PARAMS, refine_prompt="Refine.")
    assert [c.text for c in streamed] == texts(alone)[0] and [c.text for c in plain] == texts(alone)[1]
    assert calls == [2, 2]  # both rounds ran as one batch of two
    assert {(i, k) for i, k, _ in pieces} <= {(0, 1), (0, 2)}
    for k in (1, 2):
        assert "".join(p for _, kk, p in pieces if kk == k) == streamed[k - 1].text
