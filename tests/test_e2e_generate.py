"""The generative backend through the edge Envoy: the `openai` client, and streams that
arrive as they are generated (Envoy must not buffer server-sent events)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import openai
from harness import Backend, ControlPlane, Envoy

MODEL = "tiny-llama"


def test_openai_client_through_envoy_streams_as_generated(
    tmp_path: Path, model_repository: Path, controlplane: ControlPlane, start_envoy: Callable[..., Envoy]
) -> None:
    backend = Backend.start(tmp_path, model_repository, MODEL, "--fault-step-delay-ms", "20")
    try:
        status, body = controlplane.apply(
            {"kind": "Backend", "name": "llm", "spec": {"endpoints": [{"address": "127.0.0.1", "port": backend.port}]}},
            {"kind": "Service", "name": "llm", "spec": {"routes": [
                {"name": "openai", "match": {"prefix": "/v1/"}, "split": [{"backend": "llm"}]}]}},
        )
        assert status == 200, body
        envoy = start_envoy(controlplane)
        controlplane.wait_converged(envoy.node_id)
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{envoy.listen_port}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in api.models.list().data] == [MODEL]

        messages = [{"role": "user", "content": "Tell me about the gate."}]
        reply = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0,  # type: ignore[arg-type]
                                            extra_body={"ignore_eos": True})
        assert reply.usage is not None and reply.usage.completion_tokens == 16

        stream = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0, stream=True,  # type: ignore[arg-type]
                                             stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        arrivals, text, usage = [], "", None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic())
                text += chunk.choices[0].delta.content
            usage = chunk.usage or usage
        assert text == reply.choices[0].message.content
        assert usage is not None and usage.completion_tokens == 16
        gaps = sorted(b - a for a, b in zip(arrivals, arrivals[1:], strict=False))
        # A token every 20 ms at the backend: through Envoy the chunks keep that pace, not one burst.
        assert len(arrivals) >= 10 and gaps[len(gaps) // 2] >= 0.015, gaps
    finally:
        backend.proc.stop()
