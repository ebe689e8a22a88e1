"""The generative backend as a process: the official `openai` client, streaming, continuous
batching, cancellation, the prefix cache, metrics, KServe generate, and every bad input."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import aiohttp
import openai
import pytest
from backend_harness import Backend, variant_repo

from inference.generate.checkpoint import TINY
from inference.generate.http_api import FRAMING_HEADER
from inference.generate.tokenizer import TextTokenizer, render_chat

MODEL = TINY.name
GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}


def client(backend: Backend) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{backend.url}/v1", api_key="unused", max_retries=0)


def metrics(backend: Backend) -> dict[str, float]:
    """vllm:* samples for the tiny model, by name (histograms by their _count)."""
    with urllib.request.urlopen(f"{backend.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r'^(vllm:[a-z_:]+)\{model_name="' + MODEL + r'"(?:,finished_reason="(\w+)")?\} (\S+)$', line)
        if match:
            name = match.group(1) + (f":{match.group(2)}" if match.group(2) else "")
            out[name] = float(match.group(3))
    return out


def wait_idle(backend: Backend) -> dict[str, float]:
    deadline = time.monotonic() + 20
    while True:
        m = metrics(backend)
        if m["vllm:num_requests_running"] == 0 and m["vllm:num_requests_waiting"] == 0 and m["vllm:kv_cache_usage_perc"] == 0:
            return m
        assert time.monotonic() < deadline, f"engine never went idle: {m}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def tokenizer(model_repo: Path) -> TextTokenizer:
    return TextTokenizer.load(model_repo / MODEL / "1" / "tokenizer.json")


def test_openai_client_chat_and_completions(start: Callable[..., Backend], tokenizer: TextTokenizer) -> None:
    backend = start("--load", MODEL)
    api = client(backend)
    assert [m.id for m in api.models.list().data] == [MODEL]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about the river."}]
    prompt_tokens = len(tokenizer.encode(render_chat([(m["role"], m["content"]) for m in messages])))

    reply = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, **GREEDY)  # type: ignore[arg-type]
    assert reply.object == "chat.completion" and reply.model == MODEL
    assert reply.choices[0].finish_reason == "length" and reply.choices[0].message.role == "assistant"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (prompt_tokens, 12, prompt_tokens + 12)

    stream = api.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, stream=True, stream_options={"include_usage": True}, **GREEDY  # type: ignore[arg-type]
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content, "greedy decoding answers the same streamed or not"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12

    completion = api.completions.create(model=MODEL, prompt="The river is", max_tokens=5, seed=7, temperature=0.9)
    again = api.completions.create(model=MODEL, prompt="The river is", max_tokens=5, seed=7, temperature=0.9)
    assert completion.choices[0].text == again.choices[0].text, "a seed makes sampling repeatable"
    assert completion.usage is not None and completion.usage.prompt_tokens == len(tokenizer.encode("The river is"))
    default = api.completions.create(model=MODEL, prompt="The river is", extra_body={"ignore_eos": True})
    assert default.usage is not None and default.usage.completion_tokens == 16, "legacy completions default to 16 tokens"

    stopped = api.completions.create(model=MODEL, prompt="The river is", max_tokens=200, temperature=0, extra_body={"ignore_eos": True})
    full = stopped.choices[0].text
    stop = full[10:13]
    cut = api.completions.create(model=MODEL, prompt="The river is", max_tokens=200, temperature=0, stop=[stop], extra_body={"ignore_eos": True})
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].text == full[: full.index(stop)]

    with pytest.raises(openai.NotFoundError) as missing:
        api.chat.completions.create(model="nope", messages=messages)  # type: ignore[arg-type]
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_long:
        api.chat.completions.create(model=MODEL, messages=messages, max_tokens=5000)  # type: ignore[arg-type]
    assert too_long.value.code == "context_length_exceeded" and "1024" in too_long.value.message


def test_stream_chunks_arrive_as_they_are_generated(start: Callable[..., Backend]) -> None:
    """A step every 20 ms (injected) must reach the client as a chunk every ~20 ms, not a burst."""
    backend = start("--load", MODEL, "--fault-step-delay-ms", "20")
    stream = client(backend).completions.create(model=MODEL, prompt="Hello", max_tokens=20, stream=True, **GREEDY)  # type: ignore[arg-type]
    arrivals = [time.monotonic() for chunk in stream if chunk.choices and chunk.choices[0].text]
    gaps = sorted(b - a for a, b in zip(arrivals, arrivals[1:], strict=False))
    assert len(arrivals) >= 10
    assert gaps[len(gaps) // 2] >= 0.015, f"chunks arrived in a burst: gaps {gaps}"


async def test_short_request_finishes_while_long_stream_runs(start: Callable[..., Backend]) -> None:
    backend = start("--load", MODEL, "--fault-step-delay-ms", "5")
    api = openai.AsyncOpenAI(base_url=f"{backend.url}/v1", api_key="unused", max_retries=0)
    stream = await api.completions.create(model=MODEL, prompt="Hello", max_tokens=400, stream=True, **GREEDY)  # type: ignore[arg-type]
    received = 0
    async for _chunk in stream:
        received += 1
        if received == 3:
            short = await api.completions.create(model=MODEL, prompt="Hi", max_tokens=3, **GREEDY)  # type: ignore[arg-type]
            assert short.usage is not None and short.usage.completion_tokens == 3
            break
    m = metrics(backend)
    assert m["vllm:num_requests_running"] == 1, "the long stream was still generating when the short one finished"
    await stream.close()
    wait_idle(backend)


async def test_client_disconnect_stops_generation_and_frees_blocks(start: Callable[..., Backend]) -> None:
    backend = start("--load", MODEL, "--fault-step-delay-ms", "10")
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 900, "stream": True, "ignore_eos": True}
    async with aiohttp.ClientSession() as session, session.post(f"{backend.url}/v1/completions", json=body) as response:
        assert response.status == 200
        for _ in range(3):
            await response.content.readline()
        assert metrics(backend)["vllm:kv_cache_usage_perc"] > 0
    m = wait_idle(backend)
    assert m["vllm:generation_tokens_total"] < 100, "generation stopped soon after the client left"
    assert m["vllm:request_success_total:abort"] == 1


def test_prefix_cache_hits_on_a_repeated_prefix(start: Callable[..., Backend], tokenizer: TextTokenizer) -> None:
    backend = start("--load", MODEL)
    system = Path("inference/generate/corpus.txt").read_text()[:1500]
    api = client(backend)
    api.completions.create(model=MODEL, prompt=system + " First question?", max_tokens=2)
    before = metrics(backend)["vllm:prefix_cache_hits_total"]
    api.completions.create(model=MODEL, prompt=system + " Another one?", max_tokens=2)
    hits = metrics(backend)["vllm:prefix_cache_hits_total"] - before
    shared = len(tokenizer.encode(system)) - 1  # the boundary token may merge differently
    assert hits >= (shared // 16) * 16 - 16


def test_kserve_generate_and_generate_stream(start: Callable[..., Backend]) -> None:
    backend = start("--load", MODEL)
    params = {"max_tokens": 6, "temperature": 0, "ignore_eos": True}
    request = urllib.request.Request(
        f"{backend.url}/v2/models/{MODEL}/generate", data=json.dumps({"text_input": "Hello", "parameters": params}).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
        assert response.headers["endpoint-load-metrics"].startswith("TEXT application_utilization=")
    assert answer["model_name"] == MODEL and answer["text_output"]
    request = urllib.request.Request(
        f"{backend.url}/v2/models/{MODEL}/generate_stream", data=json.dumps({"text_input": "Hello", "parameters": params}).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = [json.loads(line[len(b"data: "):]) for line in response.read().splitlines() if line.startswith(b"data: ")]
    assert "".join(e["text_output"] for e in events) == answer["text_output"]
    assert events[-1]["finish_reason"] == "length"
    request = urllib.request.Request(f"{backend.url}/v2/models/nope/generate", data=b'{"text_input": "x"}', method="POST")
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(request, timeout=10)
    assert missing.value.code == 404 and "nope" in json.loads(missing.value.read())["error"]


def test_streams_end_by_closing_the_connection_only_when_asked(start: Callable[..., Backend]) -> None:
    """With `x-sluice-stream-framing: close` (the edge's llm filter sends it) a stream has no
    chunked encoding and no length and ends when the server closes; without it, a chunked stream on
    a connection kept alive. Either way clients read the same events; other answers keep alive."""
    backend = start("--load", MODEL)
    host, port = backend.url.removeprefix("http://").split(":")
    close = {FRAMING_HEADER: "close"}
    completion = json.dumps({"model": MODEL, "prompt": "Hello", "max_tokens": 6, "stream": True, "temperature": 0, "ignore_eos": True})
    generate = json.dumps({"text_input": "Hello", "parameters": {"max_tokens": 6, "temperature": 0, "ignore_eos": True}})
    bodies: dict[tuple[str, bool], bytes] = {}
    for path, body in (("/v1/completions", completion), (f"/v2/models/{MODEL}/generate_stream", generate)):
        for asked in (False, True):
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            conn.request("POST", path, body, {"Content-Type": "application/json", **(close if asked else {})})
            response = conn.getresponse()
            assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
            assert response.headers["Content-Length"] is None
            assert (response.headers["Transfer-Encoding"], response.headers["Connection"]) == (
                (None, "close") if asked else ("chunked", None)), (path, asked)
            payload = response.read()
            bodies[(path, asked)] = re.sub(rb'"(id|created)":("[^"]*"|\d+)', b"", payload)
            # The non-streaming answer on the same connection: kept alive unless the server closed.
            if asked:
                assert response.will_close
            else:
                conn.request("POST", "/v1/completions", json.dumps({"model": MODEL, "prompt": "Hi", "max_tokens": 2}),
                             {"Content-Type": "application/json", **close})
                again = conn.getresponse()
                assert again.status == 200 and again.headers["Content-Length"] and not again.will_close
                again.read()
            conn.close()
        assert bodies[(path, True)] == bodies[(path, False)], path
    assert bodies[("/v1/completions", True)].endswith(b"data: [DONE]\n\n")

    # The openai client reads a close-delimited stream as it reads a chunked one.
    framed = openai.OpenAI(base_url=f"{backend.url}/v1", api_key="unused", max_retries=0, default_headers=close)
    messages = [{"role": "user", "content": "Tell me about the river."}]
    texts = []
    for api in (client(backend), framed):
        stream = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, stream=True, **GREEDY)  # type: ignore[arg-type]
        texts.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
    assert texts[0] and texts[0] == texts[1]
    wait_idle(backend)


def test_metrics_use_vllm_names(start: Callable[..., Backend], tokenizer: TextTokenizer) -> None:
    backend = start("--load", MODEL)
    client(backend).completions.create(model=MODEL, prompt="Hello", max_tokens=4, **GREEDY)  # type: ignore[arg-type]
    m = metrics(backend)
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total", "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
                 "vllm:time_to_first_token_seconds_count", "vllm:inter_token_latency_seconds_count"):
        assert name in m, name
    assert m["vllm:generation_tokens_total"] == 4 and m["vllm:time_to_first_token_seconds_count"] == 1
    assert m["vllm:inter_token_latency_seconds_count"] == 3 and m["vllm:prompt_tokens_total"] == len(tokenizer.encode("Hello"))


BAD_INPUTS = [
    (b"not json", 400, None, None),
    (b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}', 400, None, None),
    (b"[1, 2]", 400, None, None),
    (b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', 404, "model", "model_not_found"),
    (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', 400, "model", "invalid_value"),
    (b'{"model": "tiny-llama", "messages": []}', 400, "messages", "invalid_value"),
    (b'{"model": "tiny-llama"}', 400, "messages", "invalid_value"),
    (b'{"model": "tiny-llama", "messages": [{"role": "user", "content": 5}]}', 400, "messages[0].content", "invalid_value"),
    (b'{"model": "tiny-llama", "messages": [{"role": "robot", "content": "x"}]}', 400, "messages[0].role", "invalid_value"),
    (b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "max_tokens": "5"}', 400, "max_tokens", "invalid_value"),
    (b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', 400, "max_tokens", "invalid_value"),
    (b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5000}', 400, "max_tokens", "context_length_exceeded"),
    (b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "temperature": -1}', 400, "temperature", "invalid_value"),
    (b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}', 400, "stop", "invalid_value"),
    (b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "n": 2}', 400, "n", "invalid_value"),
    (b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}}',
     400, None, "invalid_value"),
    (b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "' + b"river " * 5000 + b'"}]}', 400, "messages", "context_length_exceeded"),
    (b"[" * 100_000 + b"]" * 100_000, 400, None, None),
]


def test_bad_inputs_get_openai_errors_and_the_server_keeps_serving(start: Callable[..., Backend]) -> None:
    backend = start("--load", MODEL)
    for body, status, param, code in BAD_INPUTS:
        request = urllib.request.Request(f"{backend.url}/v1/chat/completions", data=body, method="POST")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=30)
        error = json.loads(caught.value.read())["error"]
        assert (caught.value.code, error["param"], error["code"]) == (status, param, code), (body[:80], error)
        assert error["message"] and "Traceback" not in error["message"]
    big = urllib.request.Request(f"{backend.url}/v1/completions", data=b"a" * (10 << 20), method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(big, timeout=30)
    assert caught.value.code == 413 and json.loads(caught.value.read())["error"]["code"] == "request_too_large"
    wrong = urllib.request.Request(f"{backend.url}/v1/completions", data=b'{"model": "tiny-llama", "prompt": "x"}',
                                   headers={"x-sluice-priority": "high"}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(wrong, timeout=30)
    assert caught.value.code == 400 and json.loads(caught.value.read())["error"]["param"] == "x-sluice-priority"
    reply = client(backend).completions.create(model=MODEL, prompt="Still here?", max_tokens=3, **GREEDY)  # type: ignore[arg-type]
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    wait_idle(backend)


async def test_a_thousand_streams_against_a_small_queue(start: Callable[..., Backend], model_repo: Path, tmp_path: Path) -> None:
    repo = variant_repo(model_repo, tmp_path / "small-queue", {"max_num_seqs": 4, "max_waiting": 8}, model=MODEL)
    backend = start("--load", MODEL, "--fault-step-delay-ms", "2", repo=repo)
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 8, "stream": True, "ignore_eos": True}

    async def one(session: aiohttp.ClientSession) -> int:
        async with session.post(f"{backend.url}/v1/completions", json=body) as response:
            payload = await response.read()
            if response.status == 429:
                assert response.headers["Retry-After"] == "1"
                assert json.loads(payload)["error"]["type"] == "rate_limit_exceeded"
            else:
                assert response.status == 200 and payload.endswith(b"data: [DONE]\n\n")
            return response.status

    connector = aiohttp.TCPConnector(limit=1000)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        statuses = await asyncio.gather(*(one(session) for _ in range(1000)))
    assert set(statuses) <= {200, 429} and statuses.count(200) >= 12 and statuses.count(429) > 0
    m = wait_idle(backend)
    assert m["vllm:request_success_total:length"] == statuses.count(200)
    assert client(backend).completions.create(model=MODEL, prompt="After the storm", max_tokens=2).usage is not None


async def test_sigterm_drains_open_streams_and_refuses_new_ones(start: Callable[..., Backend]) -> None:
    backend = start("--load", MODEL, "--fault-step-delay-ms", "10")
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 60, "stream": True, "ignore_eos": True}
    async with aiohttp.ClientSession() as session, session.post(f"{backend.url}/v1/completions", json=body) as response:
        assert response.status == 200
        await response.content.readline()
        backend.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while backend.get_status("/v2/health/ready") != 503:
            assert time.monotonic() < deadline, "readiness never turned 503"
            await asyncio.sleep(0.02)
        async with session.post(f"{backend.url}/v1/completions", json={**body, "stream": False}) as refused:
            assert refused.status == 503 and (await refused.json())["error"]["type"] == "service_unavailable"
        rest = await response.read()
    assert rest.endswith(b"data: [DONE]\n\n"), "the open stream ran to its end"
    assert backend.process.wait(timeout=30) == 0
