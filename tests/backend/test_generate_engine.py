"""The continuous-batching engine in process, on the real ONNX model: every greedy output is
checked token for token against the numpy reference, whatever the batching did."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from inference.errors import DeadlineExceeded
from inference.generate.checkpoint import TINY, read_spec, read_weights
from inference.generate.config import GenerateConfig
from inference.generate.engine import Engine, QueueFull
from inference.generate.llama import ReferenceModel
from inference.generate.runner import CausalLM
from inference.generate.sampling import SamplingParams
from inference.generate.sequence import FinishReason, Sequence
from inference.generate.tokenizer import TextTokenizer

GREEDY = dict(temperature=0.0, ignore_eos=True)
EngineFactory = Callable[..., Engine]


@pytest.fixture
async def make_engine(model_repo: Path) -> AsyncIterator[EngineFactory]:
    version = model_repo / TINY.name / "1"
    spec = read_spec(version)
    lm = CausalLM(version / "model.onnx", ("CPUExecutionProvider",), 2, spec.num_layers)
    tokenizer = TextTokenizer.load(version / "tokenizer.json")
    engines: list[Engine] = []
    executor = ThreadPoolExecutor(max_workers=1)

    def make(**overrides: object) -> Engine:
        config = GenerateConfig.model_validate({"name": TINY.name, "max_model_len": 1024, **overrides})
        engine = Engine(config, spec, lm, tokenizer, executor)
        engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.close()
    executor.shutdown()


def reference_greedy(model_repo: Path, prompt: list[int], count: int) -> list[int]:
    version = model_repo / TINY.name / "1"
    model = ReferenceModel(read_spec(version), read_weights(version))
    logits, out = model.forward(prompt), []
    for _ in range(count):
        out.append(int(logits[-1].argmax()))
        logits = model.forward([out[-1]])
    return out


async def collect(engine: Engine, seq: Sequence) -> tuple[list[int], FinishReason | None]:
    tokens, reason = [], None
    async for out in engine.outputs(seq):
        assert out.error is None, out.error
        if out.token_id is not None:
            tokens.append(out.token_id)
        reason = out.finish_reason
    return tokens, reason


def prompts(engine: Engine, count: int) -> list[list[int]]:
    lines = Path("inference/generate/corpus.txt").read_text().splitlines()
    texts = [line for line in lines if line][:count]
    return [engine.tokenizer.encode(t)[: 20 + 37 * i] for i, t in enumerate(texts)]


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        # Prompts in 16-token chunks, several prompts per prefill call: padded past and new tokens.
        {"prefill_chunk_tokens": 16},
        # Too few blocks for everyone at once: sequences are preempted and recomputed.
        {"kv_cache_mb": 0.25, "block_size": 8, "prefill_chunk_tokens": 64, "max_model_len": 512},
    ],
    ids=["default", "chunked-prefill", "preemption"],
)
async def test_batched_greedy_equals_one_sequence_at_a_time(make_engine: EngineFactory, model_repo: Path, overrides: dict[str, object]) -> None:
    engine = make_engine(**overrides)
    batch = prompts(engine, 6)
    lengths = [30 + 11 * i for i in range(len(batch))]
    seqs = [engine.submit(f"r{i}", p, SamplingParams(max_tokens=n, **GREEDY)) for i, (p, n) in enumerate(zip(batch, lengths, strict=True))]
    results = await asyncio.gather(*(collect(engine, s) for s in seqs))
    for prompt, count, (tokens, reason) in zip(batch, lengths, results, strict=True):
        assert reason is FinishReason.LENGTH
        assert tokens == reference_greedy(model_repo, prompt, count)
    if "kv_cache_mb" in overrides:
        assert engine.stats.preemptions > 0, "the budget was meant to force preemption"
    assert engine.pool.usage() == 0.0 and engine.load().running == 0


async def test_a_short_request_finishes_while_a_long_one_generates(make_engine: EngineFactory) -> None:
    engine = make_engine()
    prompt = engine.tokenizer.encode("Tell me about the river.")
    long = engine.submit("long", prompt, SamplingParams(max_tokens=600, **GREEDY))
    long_tokens: list[int] = []
    async for out in engine.outputs(long):
        long_tokens.append(out.token_id or 0)
        if len(long_tokens) == 5:
            break
    long = engine.submit("long2", prompt, SamplingParams(max_tokens=600, **GREEDY))
    short = engine.submit("short", prompt, SamplingParams(max_tokens=5, **GREEDY))
    done_first: list[str] = []

    async def run(name: str, seq: Sequence) -> None:
        await collect(engine, seq)
        done_first.append(name)

    await asyncio.gather(run("long", long), run("short", short))
    assert done_first == ["short", "long"]


async def test_long_prompt_is_prefilled_in_chunks_between_decode_steps(make_engine: EngineFactory) -> None:
    engine = make_engine(prefill_chunk_tokens=32)
    text = Path("inference/generate/corpus.txt").read_text()
    running = engine.submit("stream", engine.tokenizer.encode("Hello"), SamplingParams(max_tokens=400, **GREEDY))
    stream = engine.outputs(running)
    await anext(stream)
    long_prompt = engine.tokenizer.encode(text)[:640]
    calls_before = engine.prefill_calls
    long = engine.submit("long", long_prompt, SamplingParams(max_tokens=1, **GREEDY))
    received = 0
    long_task = asyncio.ensure_future(collect(engine, long))
    while not long_task.done():
        await anext(stream)
        received += 1
    await long_task
    chunks = engine.prefill_calls - calls_before
    assert chunks == 640 // 32
    # The running stream got a token in (nearly) every step the long prompt was being prefilled.
    assert received >= chunks - 2
    engine.cancel(running)


async def test_cancel_stops_within_a_step_and_frees_blocks(make_engine: EngineFactory) -> None:
    engine = make_engine()
    seq = engine.submit("c", engine.tokenizer.encode("Numbers matter"), SamplingParams(max_tokens=900, **GREEDY))
    stream = engine.outputs(seq)
    for _ in range(3):
        await anext(stream)
    assert engine.pool.usage() > 0
    steps = engine.steps
    await stream.aclose()  # the consumer went away: outputs() cancels the sequence
    for _ in range(200):
        if engine.load().running == 0:
            break
        await asyncio.sleep(0.01)
    assert engine.load().running == 0 and engine.pool.usage() == 0.0
    assert engine.steps - steps <= 2, "generation stopped at the next step boundary"
    assert engine.stats.finished["abort"] == 1


async def test_prefix_cache_reuses_a_repeated_prefix(make_engine: EngineFactory, model_repo: Path) -> None:
    engine = make_engine()
    system = engine.tokenizer.encode(Path("inference/generate/corpus.txt").read_text())[:300]
    first = system + engine.tokenizer.encode(" Question one?")
    second = system + engine.tokenizer.encode(" And a different question two?")
    tokens_a, _ = await collect(engine, engine.submit("a", first, SamplingParams(max_tokens=8, **GREEDY)))
    assert engine.stats.prefix_hits == 0
    tokens_b, _ = await collect(engine, engine.submit("b", second, SamplingParams(max_tokens=8, **GREEDY)))
    assert engine.stats.prefix_hits == (300 // 16) * 16, "every full block of the shared prefix was reused"
    assert engine.stats.prefix_queries == len(first) + len(second)
    assert tokens_b == reference_greedy(model_repo, second, 8), "reused blocks hold the right keys and values"
    assert tokens_a == reference_greedy(model_repo, first, 8)


async def test_a_prompt_being_prefilled_is_computed_once_for_requests_that_share_it(make_engine: EngineFactory, model_repo: Path) -> None:
    engine = make_engine()
    system = engine.tokenizer.encode(Path("inference/generate/corpus.txt").read_text())[:300]
    first = system + engine.tokenizer.encode(" Question one?")
    second = system + engine.tokenizer.encode(" And a different question two?")
    other = engine.tokenizer.encode("Something else entirely.")
    # Submitted together: the second waits for the blocks the first is computing (two chunks of
    # 256 tokens), then reuses them; the unrelated one is not held up behind it.
    seqs = [engine.submit(name, prompt, SamplingParams(max_tokens=8, **GREEDY))
            for name, prompt in (("a", first), ("b", second), ("c", other))]
    results = await asyncio.gather(*(collect(engine, s) for s in seqs))
    assert engine.stats.prefix_hits == (300 // 16) * 16, "the second request reused every full block of the shared prefix"
    for prompt, (tokens, _) in zip((first, second, other), results, strict=True):
        assert tokens == reference_greedy(model_repo, prompt, 8)
    assert engine.pool.usage() == 0.0


async def test_higher_priority_is_admitted_first(make_engine: EngineFactory) -> None:
    engine = make_engine(max_num_seqs=1)
    prompt = engine.tokenizer.encode("Hello")
    busy = engine.submit("busy", prompt, SamplingParams(max_tokens=30, **GREEDY))
    busy_stream = engine.outputs(busy)
    await anext(busy_stream)  # busy holds the one place; the next two wait
    low = engine.submit("low", prompt, SamplingParams(max_tokens=2, **GREEDY), priority=-1)
    high = engine.submit("high", prompt, SamplingParams(max_tokens=2, **GREEDY), priority=5)
    order: list[str] = []

    async def run(name: str, seq: Sequence) -> None:
        await collect(engine, seq)
        order.append(name)

    async def drain_busy() -> None:
        async for _ in busy_stream:
            pass
        order.append("busy")

    await asyncio.gather(drain_busy(), run("low", low), run("high", high))
    assert order == ["busy", "high", "low"]


async def test_bounded_queue_and_deadline(make_engine: EngineFactory) -> None:
    engine = make_engine(max_num_seqs=1, max_waiting=2)
    prompt = engine.tokenizer.encode("Hello")
    busy = engine.submit("busy", prompt, SamplingParams(max_tokens=200, **GREEDY))
    busy_stream = engine.outputs(busy)
    await anext(busy_stream)
    late = engine.submit("late", prompt, SamplingParams(max_tokens=2, **GREEDY), deadline_s=0.05)
    engine.submit("queued", prompt, SamplingParams(max_tokens=2, **GREEDY))
    with pytest.raises(QueueFull):
        engine.submit("refused", prompt, SamplingParams(max_tokens=2, **GREEDY))
    outputs = [out async for out in engine.outputs(late)]
    assert isinstance(outputs[-1].error, DeadlineExceeded)
    await busy_stream.aclose()
