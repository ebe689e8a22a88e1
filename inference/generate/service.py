"""From a validated request to a running sequence: tokenize, check the context, submit.

Shared by the OpenAI and the KServe generate transports, so both refuse the same inputs
with the same words and count the same tokens.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from inference.errors import InvalidInput
from inference.generate.engine import Engine
from inference.generate.registry import GenerativeModels
from inference.generate.sampling import SamplingParams
from inference.generate.sequence import Sequence

# Prompts above this many bytes are tokenized on a worker thread, off the event loop.
OFFLOAD_BYTES = 64 * 1024


class InvalidParam(InvalidInput):
    """A bad value of one named parameter (a body field or a header)."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


class ContextLengthExceeded(InvalidParam):
    pass


@dataclass(frozen=True)
class Submission:
    engine: Engine
    seq: Sequence
    prompt_tokens: int


@dataclass(frozen=True)
class Sampling:
    """What a request asked for, before the context check settles max_tokens."""

    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    seed: int | None
    stop: tuple[str, ...]
    ignore_eos: bool


class GenerationService:
    def __init__(self, models: GenerativeModels) -> None:
        self.models = models

    async def tokenize(self, engine: Engine, prompt: str | list[int], param: str) -> list[int]:
        limit = engine.config.max_model_len
        if isinstance(prompt, list):
            bad = next((t for t in prompt if t >= engine.tokenizer.vocab_size), None)
            if bad is not None:
                raise InvalidParam(f"token id {bad} is out of range: the vocabulary has {engine.tokenizer.vocab_size} tokens", param)
            ids = prompt
        else:
            size = len(prompt.encode())
            # No token covers more than max_token_bytes, so this many tokens at least: a prompt
            # that cannot fit is refused without the cost of tokenizing it.
            at_least = -(-size // engine.tokenizer.max_token_bytes)
            if at_least > limit:
                raise ContextLengthExceeded(
                    f"This model's maximum context length is {limit} tokens. However, your {param} is at least "
                    f"{at_least} tokens long. Please reduce the length of the {param}.",
                    param,
                )
            if size > OFFLOAD_BYTES:
                ids = await asyncio.get_running_loop().run_in_executor(None, engine.tokenizer.encode, prompt)
            else:
                ids = engine.tokenizer.encode(prompt)
        if not ids:
            raise InvalidParam(f"{param} is empty after tokenization", param)
        return ids

    def submit(self, engine: Engine, ids: list[int], sampling: Sampling, param: str, priority: int, deadline_s: float | None) -> Submission:
        limit = engine.config.max_model_len
        if len(ids) >= limit:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens. However, your {param} is {len(ids)} tokens long, "
                f"leaving no room for a completion. Please reduce the length of the {param}.",
                param,
            )
        max_tokens = sampling.max_tokens if sampling.max_tokens is not None else limit - len(ids)
        if len(ids) + max_tokens > limit:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens. However, you requested {len(ids) + max_tokens} tokens "
                f"({len(ids)} in the {param}, {max_tokens} in the completion). Please reduce the length of the {param} or completion.",
                "max_tokens",
            )
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if sampling.temperature is None else sampling.temperature,
            top_p=1.0 if sampling.top_p is None else sampling.top_p,
            seed=sampling.seed,
            stop=sampling.stop,
            ignore_eos=sampling.ignore_eos,
        )
        seq = engine.submit(uuid.uuid4().hex, ids, params, priority=priority, deadline_s=deadline_s)
        return Submission(engine, seq, len(ids))
