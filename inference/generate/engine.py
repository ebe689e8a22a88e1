"""Continuous batching: requests join and leave the running batch between decode steps.

Each engine step, on one worker thread, runs at most one prefill call (prompt chunks of several
waiting sequences, `prefill_chunk_tokens` in all) and one decode call (one token for every
running sequence). A long prompt therefore costs running streams one chunk's time per step,
never its whole prefill.

The decode batch is a padded tensor of every running sequence's keys and values, fed to the
model as `past_key_values` and replaced by its `present` output after each step. While the
batch keeps the same members nothing is copied; a rebuild writes the new columns back to the
block pool and gathers the batch afresh from blocks. Holes in a row (a short sequence padded
to the longest) are masked by `attention_mask`, and each row's true positions go in
`position_ids`, so sequences of any lengths share a step.

A rebuild copies every running sequence's cache, so it is amortized: a sequence that leaves
stays in the batch as a dead row (computed, its output dropped) until dead rows are a quarter
of the batch, and sequences whose prompt is done wait to join until they are a quarter of the
batch or have waited JOIN_WAIT_STEPS steps (their first token is already out; only the second
waits).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inference.errors import DeadlineExceeded, InternalError, Unavailable
from inference.generate.config import GenerateConfig
from inference.generate.kv_cache import BlockPool, prefix_hashes
from inference.generate.llama import LlamaSpec
from inference.generate.metrics import GenerationStats, Load
from inference.generate.runner import CausalLM
from inference.generate.sampling import SamplingParams, sample
from inference.generate.sequence import FinishReason, Output, Sequence
from inference.generate.tokenizer import Detokenizer, TextTokenizer
from inference.load import LoadMeter

log = logging.getLogger("inference.generate")

JOIN_WAIT_STEPS = 4


class QueueFull(Unavailable):
    """The waiting queue is at its bound: answered 429 with Retry-After."""


@dataclass
class _Batch:
    """The running sequences' keys and values as the model last returned them."""

    seqs: list[Sequence]
    past: list[Any]
    mask: np.ndarray
    base: list[int]  # per row: tokens gathered from blocks at the last rebuild
    width: int  # columns at the last rebuild; step j's token sits at column width + j
    steps: int = 0
    left: set[Sequence] = field(default_factory=set)  # rows whose sequence left: never flushed


@dataclass
class _Chunk:
    seq: Sequence
    start: int
    count: int


@dataclass
class _StepResult:
    tokens: list[tuple[Sequence, int]] = field(default_factory=list)
    error: BaseException | None = None
    failed: list[Sequence] = field(default_factory=list)


class Engine:
    def __init__(
        self,
        config: GenerateConfig,
        spec: LlamaSpec,
        lm: CausalLM,
        tokenizer: TextTokenizer,
        executor: Executor,
        step_delay_s: float = 0.0,
    ) -> None:
        self.config = config
        # Fault injection (off unless asked): a slower model, for tests of streaming and balancing.
        self.step_delay_s = step_delay_s
        self.spec = spec
        self.lm = lm
        self.tokenizer = tokenizer
        self.executor = executor
        self.stats = GenerationStats(config.name)
        self.meter = LoadMeter()  # the finish rate in the load report
        block_bytes = BlockPool.bytes_per_block(config.block_size, spec.num_layers, spec.num_kv_heads, spec.head_dim)
        num_blocks = int(config.kv_cache_mb * 2**20) // block_bytes
        needed = -(-config.max_model_len // config.block_size)
        if num_blocks < needed:
            raise ValueError(
                f"model {config.name!r}: kv_cache_mb={config.kv_cache_mb} holds {num_blocks} blocks of {config.block_size} tokens, "
                f"fewer than one sequence of max_model_len={config.max_model_len} needs ({needed})"
            )
        self.pool = BlockPool(num_blocks, config.block_size, spec.num_layers, spec.num_kv_heads, spec.head_dim)
        self._waiting: list[tuple[tuple[int, int], Sequence]] = []
        self._prefilling: list[Sequence] = []
        self._running: list[Sequence] = []
        self._batch: _Batch | None = None
        self._order = itertools.count()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.steps = 0
        self.prefill_calls = 0
        self.rebuilds = 0
        self._join_wait = 0

    # -- the caller's side ---------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"engine-{self.config.name}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for seq in [s for _, s in self._waiting] + self._prefilling + self._running:
            self._finish(seq, FinishReason.ABORT)
        self._waiting.clear()

    def load(self) -> Load:
        return Load(
            running=len(self._running) + len(self._prefilling),
            waiting=len(self._waiting),
            kv_cache_usage=self.pool.usage(),
            max_num_seqs=self.config.max_num_seqs,
            rps=self.meter.rate(),
        )

    def submit(self, request_id: str, prompt: list[int], params: SamplingParams, priority: int = 0, deadline_s: float | None = None) -> Sequence:
        """Queue a request; the caller has checked that prompt and max_tokens fit the context."""
        assert prompt and len(prompt) + params.max_tokens <= self.config.max_model_len
        if len(self._waiting) >= self.config.max_waiting:
            raise QueueFull(f"model {self.config.name!r}: {len(self._waiting)} requests already waiting; try again shortly")
        now = time.monotonic()
        seq = Sequence(
            request_id=request_id,
            prompt=prompt,
            params=params,
            detokenizer=Detokenizer(self.tokenizer, params.stop),
            priority=priority,
            deadline=None if deadline_s is None else now + deadline_s,
            arrival=now,
            order=next(self._order),
        )
        heapq.heappush(self._waiting, (seq.rank(), seq))
        self.meter.started()
        self._wake.set()
        return seq

    def cancel(self, seq: Sequence) -> None:
        """Stop generating for `seq` (its client went away): done at the next step boundary."""
        seq.cancelled = True
        self._wake.set()

    async def outputs(self, seq: Sequence) -> AsyncIterator[Output]:
        """The sequence's outputs until its last; cancels it if the consumer stops early."""
        try:
            while True:
                out = await seq.events.get()
                yield out
                if out.finish_reason is not None or out.error is not None:
                    return
        finally:
            if not self._is_done(seq):
                self.cancel(seq)

    def _is_done(self, seq: Sequence) -> bool:
        return seq not in self._running and seq not in self._prefilling and all(s is not seq for _, s in self._waiting)

    # -- the loop ------------------------------------------------------------------------

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not (self._waiting or self._prefilling or self._running):
                self._wake.clear()
                await self._wake.wait()
            self._reap(time.monotonic())
            self._admit()
            chunks = self._plan_prefill()
            decode = self._reserve_decode_blocks()
            if not chunks and not decode:
                # Nothing can run until a request arrives or is cancelled (blocks are sized so
                # that one sequence always fits once the others are gone).
                self._wake.clear()
                await self._wake.wait()
                continue
            # Prefill first, and its first tokens out before the decode call: a new request's
            # time to first token does not include the running batch's step.
            if chunks:
                self._deliver(await loop.run_in_executor(self.executor, self._step_prefill, chunks))
            if decode:
                self._deliver(await loop.run_in_executor(self.executor, self._step_decode, decode, not chunks))
            self.steps += 1

    def _reap(self, now: float) -> None:
        """Drop cancelled sequences and those whose deadline passed before their first token."""
        for seq in [s for _, s in self._waiting] + self._prefilling + self._running:
            if seq.cancelled:
                self._finish(seq, FinishReason.ABORT)
            elif seq.deadline is not None and seq.first_token_at is None and now > seq.deadline:
                waited = now - seq.arrival
                self._finish(seq, None, DeadlineExceeded(f"request deadline passed after {waited * 1000:.0f} ms without a first token"))

    def _admit(self) -> None:
        """Waiting → prefilling, best rank first, while places and KV blocks last.

        A prompt whose first uncached block another sequence is prefilling now waits (in-batch
        prefix sharing, as SGLang schedules): it is admitted once those blocks are cached and
        computes only what follows them. Admitted at once, it would compute the same blocks
        again, and a router sending a hot prompt's requests to one replica would see every
        request that arrives while the prompt is being prefilled miss."""
        bs = self.config.block_size
        computing = {h for s in self._prefilling for h in s.hashes[s.computed // bs :]}
        deferred: list[tuple[tuple[int, int], Sequence]] = []
        while self._waiting and len(self._running) + len(self._prefilling) < self.config.max_num_seqs:
            seq = self._waiting[0][1]
            hashes = prefix_hashes(seq.tokens, bs) if self.config.enable_prefix_caching else []
            # At least the last token must run through the model: its logits pick the next one.
            usable = hashes[: (len(seq.tokens) - 1) // bs]
            hit = self.pool.match(usable)
            if len(hit) < len(usable) and usable[len(hit)] in computing:
                self.pool.release(hit)
                deferred.append(heapq.heappop(self._waiting))
                continue
            fresh = self.pool.allocate(-(-len(seq.tokens) // bs) - len(hit))
            if fresh is None:
                self.pool.release(hit)
                break
            heapq.heappop(self._waiting)
            seq.blocks, seq.hashes = hit + fresh, hashes
            seq.computed = len(hit) * bs
            computing.update(hashes[len(hit) :])
            if seq.generated == 0:
                self.stats.prefix_queries += len(seq.prompt)
                self.stats.prefix_hits += seq.computed
                self.stats.queue_time.observe(time.monotonic() - seq.arrival)
            self._prefilling.append(seq)
        for item in deferred:
            heapq.heappush(self._waiting, item)

    def _plan_prefill(self) -> list[_Chunk]:
        budget = self.config.prefill_chunk_tokens
        chunks: list[_Chunk] = []
        for seq in sorted(self._prefilling, key=Sequence.rank):
            count = min(len(seq.tokens) - seq.computed, budget)
            if count <= 0:
                break
            chunks.append(_Chunk(seq, seq.computed, count))
            budget -= count
        return chunks

    def _reserve_decode_blocks(self) -> list[Sequence]:
        """Every running sequence gets the block its next token's keys go to, preempting the
        lowest-ranked sequences (recomputed later from their tokens) when blocks run out."""
        bs = self.config.block_size
        for seq in sorted(self._running, key=Sequence.rank):
            if seq not in self._running:
                continue  # preempted by a better-ranked sequence in this loop
            while len(seq.blocks) * bs < len(seq.tokens):
                block = self.pool.allocate(1)
                if block is not None:
                    seq.blocks += block
                    continue
                victim = max(self._running + self._prefilling, key=Sequence.rank)
                self._preempt(victim)
                if victim is seq:
                    break
        return list(self._running)

    def _preempt(self, seq: Sequence) -> None:
        log.info("preempting %s (%d tokens) for lack of KV-cache blocks", seq.request_id, len(seq.tokens))
        self.stats.preemptions += 1
        self._remove(seq)
        seq.blocks, seq.computed, seq.hashes = [], 0, []
        heapq.heappush(self._waiting, (seq.rank(), seq))

    def _remove(self, seq: Sequence) -> None:
        if self._batch is not None and seq in self._batch.seqs:
            self._batch.left.add(seq)
        if seq in self._running:
            self._running.remove(seq)
        elif seq in self._prefilling:
            self._prefilling.remove(seq)
        else:
            self._waiting = [(r, s) for r, s in self._waiting if s is not seq]
            heapq.heapify(self._waiting)
        self.pool.release(seq.blocks)
        seq.blocks = []

    def _finish(self, seq: Sequence, reason: FinishReason | None, error: Exception | None = None) -> None:
        self._remove(seq)
        self.meter.finished()
        now = time.monotonic()
        if error is None:
            assert reason is not None
            seq.events.put_nowait(Output(None, seq.detokenizer.flush(), reason))
            self.stats.finished[reason.value] += 1
            if reason is not FinishReason.ABORT:
                self.stats.e2e.observe(now - seq.arrival)
        else:
            seq.events.put_nowait(Output(None, "", None, error))  # type: ignore[arg-type]
            self.stats.finished["error"] += 1

    # -- results -------------------------------------------------------------------------

    def _deliver(self, result: _StepResult) -> None:
        if result.error is not None:
            log.error("engine step failed", exc_info=result.error)
            for seq in result.failed:
                # The exception's text stays in the log: it may name paths and internals.
                self._finish(seq, None, InternalError(f"model {self.config.name!r} failed to run; the server log says why"))
        now = time.monotonic()
        for seq, token in result.tokens:
            if seq.cancelled:
                continue  # reaped at the top of the next step
            if seq in self._prefilling:
                self._prefilling.remove(seq)
                self._running.append(seq)
            if seq.first_token_at is None:
                seq.first_token_at = now
                self.stats.ttft.observe(now - seq.arrival)
            elif seq.last_token_at is not None:
                self.stats.itl.observe(now - seq.last_token_at)
            seq.last_token_at = now
            seq.tokens.append(token)
            self.stats.generation_tokens += 1
            if seq.generated == 1:
                self.stats.prompt_tokens += len(seq.prompt)
            self._emit(seq, token)

    def _emit(self, seq: Sequence, token: int) -> None:
        if token in self.tokenizer.stop_ids and not seq.params.ignore_eos:
            self._finish(seq, FinishReason.STOP)
            return
        text, stopped = seq.detokenizer.add(token)
        if stopped:
            seq.events.put_nowait(Output(token, text))
            self._finish(seq, FinishReason.STOP)
        elif seq.generated >= seq.params.max_tokens or len(seq.tokens) >= self.config.max_model_len:
            seq.events.put_nowait(Output(token, text))
            self._finish(seq, FinishReason.LENGTH)
        else:
            seq.events.put_nowait(Output(token, text))

    # -- the worker thread ---------------------------------------------------------------

    def _step_prefill(self, chunks: list[_Chunk]) -> _StepResult:
        self._fault_delay()
        result = _StepResult()
        try:
            self._prefill(chunks, result)
        except Exception as error:  # noqa: BLE001 - reported to the sequences that were in the call
            result.error, result.failed = error, [c.seq for c in chunks]
        return result

    def _step_decode(self, decode: list[Sequence], delay: bool) -> _StepResult:
        if delay:
            self._fault_delay()
        result = _StepResult()
        try:
            self._decode(decode, result)
        except Exception as error:  # noqa: BLE001 - as above; the batch's unsaved columns are lost with it
            result.error, result.failed = error, list(decode)
            self._batch = None
        return result

    def _fault_delay(self) -> None:
        if self.step_delay_s:
            time.sleep(self.step_delay_s)

    def _prefill(self, chunks: list[_Chunk], result: _StepResult) -> None:
        self.prefill_calls += 1
        spec, rows = self.spec, len(chunks)
        past_len = max(c.start for c in chunks)
        new_len = max(c.count for c in chunks)
        shape = (rows, spec.num_kv_heads, past_len, spec.head_dim)
        past = [np.zeros(shape, np.float32) for _ in range(2 * spec.num_layers)]
        mask = np.zeros((rows, past_len + new_len), np.int64)
        ids = np.zeros((rows, new_len), np.int64)
        positions = np.zeros((rows, new_len), np.int64)
        for r, c in enumerate(chunks):
            if c.start:
                keys, values = self.pool.read(c.seq.blocks, c.start)
                for layer in range(spec.num_layers):
                    past[2 * layer][r, :, : c.start] = keys[layer]
                    past[2 * layer + 1][r, :, : c.start] = values[layer]
            mask[r, : c.start] = 1
            mask[r, past_len : past_len + c.count] = 1
            ids[r, : c.count] = c.seq.tokens[c.start : c.start + c.count]
            positions[r] = np.arange(c.start, c.start + new_len)
        logits, presents = self.lm.run(self._feeds(ids, mask, positions, past))
        host = [self.lm.host(p) for p in presents]
        for r, c in enumerate(chunks):
            seq = c.seq
            cols = slice(past_len, past_len + c.count)
            keys = np.stack([host[2 * layer][r, :, cols] for layer in range(spec.num_layers)])
            values = np.stack([host[2 * layer + 1][r, :, cols] for layer in range(spec.num_layers)])
            self.pool.write(seq.blocks, c.start, keys, values)
            seq.computed = c.start + c.count
            for i in range(seq.computed // self.config.block_size):
                if i < len(seq.hashes):
                    self.pool.register(seq.blocks[i], seq.hashes[i])
            if seq.computed == len(seq.tokens):
                result.tokens.append((seq, sample(logits[r, c.count - 1], seq.params, seq.rng)))

    def _decode(self, seqs: list[Sequence], result: _StepResult) -> None:
        batch = self._batch
        members = set(batch.seqs) - batch.left if batch is not None else set()
        joining = sum(1 for s in seqs if s not in members)
        if batch is None or not members or self._rebuild_due(batch, joining):
            batch = self._rebuild(seqs)
        elif joining:
            self._join_wait += 1
        rows = len(batch.seqs)
        mask = np.concatenate([batch.mask, np.ones((rows, 1), np.int64)], axis=1)
        ids = np.array([[s.tokens[-1]] for s in batch.seqs], np.int64)
        positions = np.array([[len(s.tokens) - 1] for s in batch.seqs], np.int64)
        logits, presents = self.lm.run(self._feeds(ids, mask, positions, batch.past))
        batch.past, batch.mask = presents, mask
        batch.steps += 1
        result.tokens.extend(
            (seq, sample(logits[r, -1], seq.params, seq.rng)) for r, seq in enumerate(batch.seqs) if seq not in batch.left
        )

    def _rebuild_due(self, batch: _Batch, joining: int) -> bool:
        size = len(batch.seqs)
        if 4 * len(batch.left) > size:
            return True
        return joining > 0 and (4 * joining >= size or self._join_wait >= JOIN_WAIT_STEPS)

    def _rebuild(self, seqs: list[Sequence]) -> _Batch:
        self.rebuilds += 1
        self._join_wait = 0
        self._flush(set(seqs))
        spec = self.spec
        width = max(s.computed for s in seqs)
        shape = (len(seqs), spec.num_kv_heads, width, spec.head_dim)
        past = [np.zeros(shape, np.float32) for _ in range(2 * spec.num_layers)]
        mask = np.zeros((len(seqs), width), np.int64)
        for r, seq in enumerate(seqs):
            assert seq.computed == len(seq.tokens) - 1, "a running sequence has all but its last token in blocks"
            keys, values = self.pool.read(seq.blocks, seq.computed)
            for layer in range(spec.num_layers):
                past[2 * layer][r, :, : seq.computed] = keys[layer]
                past[2 * layer + 1][r, :, : seq.computed] = values[layer]
            mask[r, : seq.computed] = 1
        self._batch = _Batch(list(seqs), past, mask, [s.computed for s in seqs], width)
        return self._batch

    def _flush(self, keep: set[Sequence]) -> None:
        """Write the keys and values the batch computed since its last rebuild into the blocks
        of the sequences in `keep` (the others left the batch; their blocks are gone)."""
        batch, self._batch = self._batch, None
        if batch is None or batch.steps == 0:
            return
        host = [self.lm.host(p) for p in batch.past]
        cols = slice(batch.width, batch.width + batch.steps)
        for r, seq in enumerate(batch.seqs):
            if seq not in keep or seq in batch.left:
                continue
            assert seq.computed == batch.base[r]
            keys = np.stack([host[2 * layer][r, :, cols] for layer in range(self.spec.num_layers)])
            values = np.stack([host[2 * layer + 1][r, :, cols] for layer in range(self.spec.num_layers)])
            self.pool.write(seq.blocks, seq.computed, keys, values)
            seq.computed += batch.steps

    def _feeds(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: list[Any]) -> dict[str, Any]:
        feeds: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        feeds.update(zip(self.lm.past_names, past, strict=True))
        return feeds
