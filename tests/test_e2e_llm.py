"""Model routing from the request body at the edge (filters/llm): a real Envoy, two real
generative backends, the `openai` client. Public model names map to backends and are rewritten
to the name each backend serves; bad input is answered at the edge, in OpenAI's error shape,
and never reaches a backend."""

from __future__ import annotations

import contextlib
import json
import random
import re
import socket
import string
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPResponse
from pathlib import Path

import openai
import pytest
from harness import PYTHON, Backend, ControlPlane, Envoy, free_port, http, wait_until

SERVED = "tiny-llama"
MAX_BODY = 8 * 1024 * 1024


def served_requests(backend: Backend) -> int:
    """Requests the backend finished, from its own metrics (vllm:request_success_total)."""
    text = http("GET", f"{backend.url}/metrics")[2].decode()
    return sum(int(float(v)) for v in re.findall(r"^vllm:request_success_total\{[^}]*\} (\S+)$", text, re.M))


@pytest.fixture
def two_models(tmp_path: Path, model_repository: Path, controlplane: ControlPlane,
               start_envoy: Callable[..., Envoy]) -> Iterator[tuple[Envoy, Backend, Backend]]:
    """`fast` served by backend a, `smart` by backend b (both really serve tiny-llama)."""
    a = Backend.start(tmp_path, model_repository, SERVED)
    try:
        # Room for a body of the edge's limit once the edge has written a longer name into it.
        b = Backend.start(tmp_path, model_repository, SERVED, "--max-generate-request-bytes", str(2 * MAX_BODY))
        try:
            status, body = controlplane.apply(
                *({"kind": "Backend", "name": n, "spec": {"endpoints": [{"address": "127.0.0.1", "port": x.port}]}}
                  for n, x in (("a", a), ("b", b))),
                {"kind": "Service", "name": "llm", "spec": {"routes": [
                    {"name": "openai", "match": {"prefix": "/v1/"}, "split": [{"backend": "a"}]}]}},
                {"kind": "Model", "name": "fast", "spec": {"service": "llm", "model": "fast", "routes": ["openai"],
                                                          "backends": [{"backend": "a", "model": SERVED}]}},
                {"kind": "Model", "name": "smart", "spec": {"service": "llm", "model": "smart", "routes": ["openai"],
                                                           "backends": [{"backend": "b", "model": SERVED}]}},
            )
            assert status == 200, body
            envoy = start_envoy(controlplane)
            controlplane.wait_converged(envoy.node_id)
            yield envoy, a, b
        finally:
            b.proc.stop()
    finally:
        a.proc.stop()


def chat(model: object, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, **extra}


def test_alternating_models_each_reach_their_backend(two_models: tuple[Envoy, Backend, Backend]) -> None:
    envoy, a, b = two_models
    api = openai.OpenAI(base_url=f"{envoy.url}/v1", api_key="unused", max_retries=0)
    # Answered by the edge from policy: the public names, not what the backends serve.
    assert sorted(m.id for m in api.models.list().data) == ["fast", "smart"]
    reply = api.chat.completions.create(model="smart", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert reply.model == SERVED  # the backend got the rewritten name

    before = served_requests(a), served_requests(b)

    def send(i: int) -> int:
        return http("POST", f"{envoy.url}/v1/chat/completions", chat("fast" if i % 2 == 0 else "smart"),
                    timeout=30)[0]

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(send, range(1000)))
    assert statuses == [200] * 1000
    assert (served_requests(a) - before[0], served_requests(b) - before[1]) == (500, 500)
    # Without tenants nobody is one: a client's own tenant header names no metric series.
    assert http("POST", f"{envoy.url}/v1/chat/completions", chat("fast"), {"x-sluice-tenant": "evil"})[0] == 200
    stats = envoy.stats()
    assert 'tenant="none",model="fast",backend="a"' in stats and 'tenant="evil"' not in stats


def openai_error(status: int, body: bytes, kind: str = "invalid_request_error") -> dict[str, object]:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == kind, body
    return dict(error)


def post_raw(envoy: Envoy, body: bytes, chunked: bool) -> tuple[int, bytes]:
    """POST with Content-Length, or chunked in 1 MiB pieces. The body is sent from a thread while
    the answer is read: an edge that refuses early answers before the client has sent it all
    (and may reset the connection once it has answered)."""
    if chunked:
        framed = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + (1 << 20)]), body[i:i + (1 << 20)])
                          for i in range(0, len(body), 1 << 20)) + b"0\r\n\r\n"
        head = b"Transfer-Encoding: chunked\r\n"
    else:
        framed, head = body, b"Content-Length: %d\r\n" % len(body)
    with socket.create_connection(("127.0.0.1", envoy.listen_port), timeout=60) as sock:
        def send() -> None:
            with contextlib.suppress(OSError):
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
                             + head + b"\r\n" + framed)
        sender = threading.Thread(target=send)
        sender.start()
        try:
            response = HTTPResponse(sock)
            response.begin()
            return response.status, response.read()
        finally:
            sender.join()


def padded(model: str, size: int) -> bytes:
    """A request of exactly `size` bytes: padding in `user`, a field the backend ignores."""
    empty = json.dumps(chat(model, user="")).encode()
    body = json.dumps(chat(model, user="x" * (size - len(empty)))).encode()
    assert len(body) == size
    return body


def test_bad_input_answered_at_the_edge(two_models: tuple[Envoy, Backend, Backend]) -> None:
    envoy, a, b = two_models
    before = served_requests(a), served_requests(b)
    cases: list[tuple[bytes, int, object, object]] = [
        (b"model=fast", 400, None, None),
        (b"[\"fast\"]", 400, None, None),
        (json.dumps({"messages": []}).encode(), 400, "model", None),
        (json.dumps(chat(5)).encode(), 400, "model", "invalid_type"),
        (json.dumps(chat(["fast"])).encode(), 400, "model", "invalid_type"),
        (json.dumps(chat("gpt-9")).encode(), 404, None, "model_not_found"),
        (json.dumps(chat("fast", max_tokens=0)).encode(), 400, "max_tokens", "invalid_value"),
        (json.dumps(chat("fast", max_tokens="16")).encode(), 400, "max_tokens", "invalid_value"),
        (json.dumps(chat("fast", max_tokens=1.5)).encode(), 400, "max_tokens", "invalid_value"),
    ]
    for body, status, param, code in cases:
        got, _, answer = http("POST", f"{envoy.url}/v1/chat/completions", body)
        assert got == status, (body, answer)
        error = openai_error(got, answer)
        assert (error["param"], error["code"]) == (param, code), (body, error)
    assert "`gpt-9`" in str(openai_error(404, http("POST", f"{envoy.url}/v1/chat/completions", chat("gpt-9"))[2])["message"])

    for chunked in (False, True):
        status, answer = post_raw(envoy, padded("fast", MAX_BODY + 1), chunked)
        assert status == 413, answer[:200]
        assert openai_error(status, answer)["code"] == "request_too_large"
    assert (served_requests(a), served_requests(b)) == before  # nothing was forwarded

    for chunked in (False, True):
        status, answer = post_raw(envoy, padded("smart", MAX_BODY), chunked)
        assert status == 200, answer[:300]
        assert json.loads(answer)["model"] == SERVED
    assert (served_requests(a), served_requests(b)) == (before[0], before[1] + 2)


def sluice_cli(controlplane: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "sluice", *args, "--server", controlplane.url],
                          capture_output=True, text=True, timeout=60, check=True)


def test_api_keys_checked_at_the_edge_and_revoked(tmp_path: Path, controlplane: ControlPlane,
                                                  two_models: tuple[Envoy, Backend, Backend]) -> None:
    envoy, a, _ = two_models
    created = sluice_cli(controlplane, "apikey", "create", "acme", "--id", "laptop")
    key = created.stdout.strip()
    assert key.startswith("sk-sluice-") and key not in created.stderr
    assert sluice_cli(controlplane, "apikey", "list", "acme").stdout.split() == ["laptop"]

    url = f"{envoy.url}/v1/chat/completions"
    # Once a tenant exists, a request without a key is refused at the edge.
    wait_until(lambda: http("POST", url, chat("fast"))[0] == 401, 10, what="keys required")
    missing = openai_error(401, http("POST", url, chat("fast"))[2])
    assert missing["code"] is None and "didn't provide an API key" in str(missing["message"])
    wrong = http("POST", url, chat("fast"), {"Authorization": f"Bearer {key}x"})
    assert wrong[0] == 401 and openai_error(*wrong[::2])["code"] == "invalid_api_key"
    assert key.encode() not in wrong[2]
    assert http("GET", f"{envoy.url}/v1/models")[0] == 401

    api = openai.OpenAI(base_url=f"{envoy.url}/v1", api_key=key, max_retries=0)
    assert sorted(m.id for m in api.models.list().data) == ["fast", "smart"]
    before = served_requests(a)
    assert api.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}], max_tokens=1).model == SERVED
    assert served_requests(a) == before + 1

    revoked = time.monotonic()
    sluice_cli(controlplane, "apikey", "revoke", "acme", "laptop")
    wait_until(lambda: http("POST", url, chat("fast"), {"Authorization": f"Bearer {key}"})[0] == 401, 10,
               interval=0.01, what="key revoked at the edge")
    print(f"revocation in force at the edge {1000 * (time.monotonic() - revoked):.0f} ms after the CLI started")

    # The key was shown once, by the CLI: nothing stored or logged holds it.
    for path in tmp_path.iterdir():
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


def completion(prompt: str, max_tokens: int) -> dict[str, object]:
    return {"model": "fast", "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True}


def remaining_tokens(envoy: Envoy, key: str) -> tuple[int, dict[str, str]]:
    """What a request no budget can hold is told: the tokens left in the window."""
    status, headers, body = http("POST", f"{envoy.url}/v1/completions", completion("x", 1_000_000),
                                 {"Authorization": f"Bearer {key}"})
    assert status == 429, body
    assert openai_error(429, body, "tokens")["code"] == "rate_limit_exceeded"
    return int(re.search(r";r=(\d+);", headers["ratelimit"])[1]), headers  # type: ignore[index]


def test_token_budget_reserves_then_reconciles(controlplane: ControlPlane,
                                               two_models: tuple[Envoy, Backend, Backend]) -> None:
    """64 clients at once against 1,000 tokens a minute: each request reserves 50 (its body's
    bytes / 4 plus max_tokens) and really costs 40 to 60 (random characters are about a token
    each, so prompts cost more or less than their estimate). The budget never holds more than
    it admits, and once every answer is in, its count is the sum of the real usage."""
    envoy, a, _ = two_models
    key = "sk-test-budget-" + "k" * 16
    status, body = controlplane.apply(
        {"kind": "Tenant", "name": "acme", "spec": {"keys": [{"id": "one", "key": key}]}},
        {"kind": "TokenBudget", "name": "acme-fast", "spec": {"tenant": "acme", "model": "fast", "tokens": 1000}})
    assert status == 200, body
    auth = {"Authorization": f"Bearer {key}"}
    wait_until(lambda: http("GET", f"{envoy.url}/v1/models", headers=auth)[0] == 200, 10, what="key in force")

    # Requests reserving exactly 50 whose real cost (asked of the backend directly) is 40..60.
    rng = random.Random(7)
    pool: list[tuple[dict[str, object], int]] = []
    while len(pool) < 40:
        prompt = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(rng.randint(1, 40)))
        size = len(json.dumps(completion(prompt, 10)).encode())  # two digits of max_tokens, as below
        max_tokens = 50 - (size + 3) // 4
        if not 10 <= max_tokens <= 99:
            continue
        request = completion(prompt, max_tokens)
        assert (len(json.dumps(request).encode()) + 3) // 4 + max_tokens == 50
        real = json.loads(http("POST", f"{a.url}/v1/completions", {**request, "model": SERVED})[2])["usage"]["total_tokens"]
        if 40 <= real <= 60:
            pool.append((request, real))

    while time.time() % 60 > 40:  # the burst and the probe in one window of the budget
        time.sleep(0.5)
    start_window = int(time.time() // 60)
    used: list[int] = []

    def client(i: int) -> None:
        for n in range(100):
            request, _ = pool[(i + n) % len(pool)]
            status, _, answer = http("POST", f"{envoy.url}/v1/completions", request, auth, timeout=30)
            if status != 200:
                assert status == 429, answer
                return
            used.append(json.loads(answer)["usage"]["total_tokens"])

    with ThreadPoolExecutor(64) as pool_:
        list(pool_.map(client, range(64)))
    remaining, headers = remaining_tokens(envoy, key)
    assert int(time.time() // 60) == start_window, "the window turned during the test"
    print(f"admitted {len(used)} requests, {sum(used)} real tokens; budget 1000, counted {1000 - remaining}")
    assert 1000 - remaining == sum(used)  # reconciled exactly
    # Reservations never pass the budget; a request can cost 10 more than it reserved, and at
    # most 1000 / 50 are in flight at once.
    assert 950 <= sum(used) <= 1000 + 10 * 20
    assert headers["ratelimit-policy"] == '"acme-fast";q=1000;w=60' and 0 < int(headers["retry-after"]) <= 60


def backend_counter(backend: Backend, name: str) -> int:
    text = http("GET", f"{backend.url}/metrics")[2].decode()
    return sum(int(float(v)) for v in re.findall(rf"^vllm:{name}_total\{{[^}}]*\}} (\S+)$", text, re.M))


def first_event_s(envoy: Envoy, key: str) -> float:
    """Seconds from sending a streamed request to its first event, at the client."""
    payload = json.dumps(chat("fast", max_tokens=4, stream=True, ignore_eos=True)).encode()
    with socket.create_connection(("127.0.0.1", envoy.listen_port), timeout=30) as sock:
        start = time.perf_counter()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + key.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
        response = HTTPResponse(sock)
        response.begin()
        while not response.readline().startswith(b"data:"):
            pass
        first = time.perf_counter() - start
        response.read()
        response.close()
    return first


def edge_genai(envoy: Envoy) -> dict[str, float]:
    """The llm filter's GenAI metrics of the one series, from Envoy's admin (JSON: quantiles)."""
    stats = json.loads(http("GET", f"{envoy.admin}/stats?format=json&filter=gen_ai")[2])["stats"]
    out: dict[str, float] = {}
    for stat in stats:
        if "name" in stat:
            out[stat["name"].rsplit(".", 1)[1]] = stat["value"]
        else:
            quantiles = stat["histograms"]["supported_quantiles"]
            for h in stat["histograms"]["computed_quantiles"]:
                if h["name"].endswith("time_to_first_token"):
                    for q, value in zip(quantiles, h["values"], strict=True):
                        out[f"ttft_p{q:g}"] = value["cumulative"]
    return out


def backend_tokens(backend: Backend) -> int:
    """Prompt and generated tokens the backend counted (vLLM's metric names)."""
    text = http("GET", f"{backend.url}/metrics")[2].decode()
    return sum(int(float(v)) for v in re.findall(
        r"^vllm:(?:prompt|generation)_tokens_total\{[^}]*\} (\S+)$", text, re.M))


def test_streams_reconciled_from_their_last_event_and_refunded_when_cancelled(
        tmp_path: Path, model_repository: Path, controlplane: ControlPlane, start_envoy: Callable[..., Envoy]) -> None:
    slow = Backend.start(tmp_path, model_repository, SERVED, "--fault-step-delay-ms", "20")
    try:
        key = "sk-test-streams-" + "s" * 16
        status, body = controlplane.apply(
            {"kind": "Backend", "name": "slow", "spec": {"endpoints": [{"address": "127.0.0.1", "port": slow.port}]}},
            {"kind": "Service", "name": "llm", "spec": {"routes": [
                {"name": "openai", "match": {"prefix": "/v1/"}, "split": [{"backend": "slow"}], "timeout_s": 0}]}},
            {"kind": "Model", "name": "fast", "spec": {"service": "llm", "model": "fast", "routes": ["openai"],
                                                      "backends": [{"backend": "slow", "model": SERVED}]}},
            {"kind": "Tenant", "name": "acme", "spec": {"keys": [{"id": "one", "key": key}]}},
            {"kind": "TokenBudget", "name": "acme-fast", "spec": {
                "tenant": "acme", "model": "fast", "tokens": 20_000, "soft_limit_percent": 1}})
        assert status == 200, body
        envoy = start_envoy(controlplane)
        controlplane.wait_converged(envoy.node_id)
        api = openai.OpenAI(base_url=f"{envoy.url}/v1", api_key=key, max_retries=0)
        messages = [{"role": "user", "content": "Tell me about the gate."}]

        def counted() -> int:
            return 20_000 - remaining_tokens(envoy, key)[0]

        # The client asks for no usage: the edge asks for it, counts it, and removes it again.
        chunks = list(api.chat.completions.create(model="fast", messages=messages, max_tokens=16, stream=True,  # type: ignore[arg-type]
                                                  extra_body={"ignore_eos": True}))
        assert chunks and all(c.usage is None for c in chunks)
        assert counted() == backend_tokens(slow)
        # The client asks for usage: it gets it, and the edge counts the same.
        chunks = list(api.chat.completions.create(model="fast", messages=messages, max_tokens=16, stream=True,  # type: ignore[arg-type]
                                                  stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 16
        assert counted() == backend_tokens(slow)

        # Telemetry at the edge: token counters equal the backend's, TTFT as the client sees it.
        client_ttft = sorted(first_event_s(envoy, key) for _ in range(12))
        # Envoy merges histograms when its admin is read (stats_flush_on_admin): the first read may precede it.
        edge = wait_until(lambda: (e := edge_genai(envoy)).get("ttft_p50") is not None and e, 5, what="histograms merged")
        assert edge["input"] == backend_counter(slow, "prompt_tokens") and edge["output"] == backend_counter(slow, "generation_tokens")
        assert edge["in_flight"] == 0
        print(f"TTFT p50/p90: edge {edge['ttft_p50']:.1f}/{edge['ttft_p90']:.1f} ms, client "
              f"{1000 * client_ttft[len(client_ttft) // 2]:.1f}/{1000 * client_ttft[len(client_ttft) * 9 // 10]:.1f} ms")
        # Envoy interpolates quantiles inside histogram buckets several ms wide here: 10% plus 5 ms
        # tells TTFT from any other duration without failing on a bucket edge (the figures are
        # printed above; docs/ai-edge.md records a run).
        for quantile, at in ((50, len(client_ttft) // 2), (90, len(client_ttft) * 9 // 10)):
            assert abs(edge[f"ttft_p{quantile}"] - 1000 * client_ttft[at]) <= 0.1 * 1000 * client_ttft[at] + 5.0, (
                edge, client_ttft)

        # A stream of 200 tokens cancelled after 20: the unused reservation comes back at once.
        before = counted()
        request = chat("fast", max_tokens=200, stream=True, ignore_eos=True)
        with socket.create_connection(("127.0.0.1", envoy.listen_port), timeout=30) as sock:
            payload = json.dumps(request).encode()
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
                         b"Authorization: Bearer " + key.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(payload)
                         + payload)
            response = HTTPResponse(sock)
            response.begin()
            # Past 1% of the budget (200 tokens, with this reservation): the answer says so.
            assert response.status == 200 and response.getheader("x-sluice-budget-soft-limit") == "acme-fast"
            events = 0
            while events < 20:
                events += response.readline().startswith(b"data:")
            reserved = counted() - before
            assert reserved > 200  # the prompt's estimate and max_tokens
            response.close()
            sock.shutdown(socket.SHUT_RDWR)  # the client goes away
        cancelled = time.monotonic()
        wait_until(lambda: counted() - before < 60, 1.0, interval=0.02, what="the unused reservation refunded")
        print(f"refunded {reserved - (counted() - before)} of {reserved} tokens "
              f"{1000 * (time.monotonic() - cancelled):.0f} ms after the client went away")
    finally:
        slow.proc.stop()


def test_a_model_falls_back_in_order_when_its_backend_is_down(controlplane: ControlPlane,
                                                              two_models: tuple[Envoy, Backend, Backend]) -> None:
    envoy, a, b = two_models
    health = {"path": "/v2/health/ready", "interval_s": 0.5, "timeout_s": 0.25}
    status, body = controlplane.apply(
        {"kind": "Backend", "name": "dead", "spec": {"endpoints": [{"address": "127.0.0.1", "port": free_port()}],
                                                   "health_check": health}},
        {"kind": "Model", "name": "spare", "spec": {"service": "llm", "model": "spare", "routes": ["openai"],
                                                   "backends": [{"backend": "dead", "model": SERVED}],
                                                   "fallback": ["b", "a"]}})
    assert status == 200, body
    url = f"{envoy.url}/v1/chat/completions"
    wait_until(lambda: http("POST", url, chat("spare"))[0] == 200, 15, what="the fallback serving")
    before = served_requests(a), served_requests(b)
    assert [http("POST", url, chat("spare"))[0] for _ in range(10)] == [200] * 10
    # The first fallback takes it all: the second is only for when both are down.
    assert (served_requests(a), served_requests(b)) == (before[0], before[1] + 10)
