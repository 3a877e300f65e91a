import httpx
import pytest

from ptr.inference import SamplingParams, refine
from ptr.inference.openai_backend import EndpointError, OpenAIBackend
from tests.support.procs import free_port, start, stop, wait_http


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """One test server (one tiny-random load) for the module; ``server`` sets its mode per test."""
    port = free_port()
    proc = start(
        ["-m", "tests.support.openai_server", "--port", str(port)],
        log=tmp_path_factory.mktemp("openai") / "server.log",
    )
    try:
        # one start for the module: on a machine shared with other work it may take over a minute
        wait_http(f"http://127.0.0.1:{port}/v1/models", timeout=300, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def set_mode(root: str, *, fail_first: int = 0, leak_turn_end: bool = False) -> None:
    resp = httpx.post(f"{root}/mode", json={"fail_first": fail_first, "leak_turn_end": leak_turn_end})
    assert resp.status_code == 200 and resp.json()["failures_left"] == fail_first, resp.text


@pytest.fixture()
def server(request, started):
    """The server's /v1, answering the first ``param`` generation requests with HTTP 503."""
    set_mode(started, fail_first=getattr(request, "param", 0))
    yield f"{started}/v1"
    set_mode(started)


def test_openai_backend_matches_local_generation(server, tiny_backend):
    client = OpenAIBackend(server, concurrency=4)
    assert client.model_name == "test-model"  # discovered from /models
    convs = [[{"role": "user", "content": f"What is {i} * 7?"}] for i in range(6)]
    params = SamplingParams(max_new_tokens=8)
    remote = refine(client, convs, 2, params)
    local = refine(tiny_backend, convs, 2, params)
    assert [[c.text for c in r] for r in remote] == [[c.text for c in r] for r in local]
    assert all(c.completion_tokens > 0 for r in remote for c in r)
    plain = client.generate(["Question: 2+2?\nAnswer:"], params)[0]
    assert plain.prompt_tokens > 0


@pytest.mark.parametrize("server", [2], indirect=True)
def test_openai_backend_retries_transient_errors(server):
    client = OpenAIBackend(server, "test-model", backoff=0.01, concurrency=1)
    out = client.generate([[{"role": "user", "content": "hi"}]], SamplingParams(max_new_tokens=4))
    assert out[0].completion_tokens > 0


@pytest.mark.parametrize("server", [100], indirect=True)
def test_openai_backend_gives_up_with_clear_error(server):
    client = OpenAIBackend(server, "test-model", backoff=0.01, max_retries=2)
    with pytest.raises(EndpointError, match="HTTP 503"):
        client.generate([[{"role": "user", "content": "hi"}]], SamplingParams(max_new_tokens=4))


def test_openai_backend_unreachable():
    client_url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EndpointError, match="ConnectError"):
        OpenAIBackend(client_url, "m", backoff=0.01, max_retries=1, timeout=2).generate(
            ["x"], SamplingParams(max_new_tokens=2)
        )


def test_openai_backend_ends_answers_at_the_turn_end_the_server_let_through(started):
    """A server that returns special tokens as text and ignores stop strings: the client still ends
    the answer at the end of the turn, and asks for it (the end-of-turn markers go out as stops)."""
    set_mode(started, leak_turn_end=True)
    try:
        client = OpenAIBackend(f"{started}/v1", concurrency=1)
        params = SamplingParams(max_new_tokens=6, stop=("\nQuestion:",))
        assert client.stops(params) == ["\nQuestion:", "<|im_end|>", "<|endoftext|>", "<|eot_id|>"]
        (out,) = client.generate([[{"role": "user", "content": "hi"}]], params)
    finally:
        set_mode(started)
    assert "<|im_end|>" not in out.text and "invented" not in out.text
    assert out.finish_reason == "stop"
