"""One generation request as the engine tracks it, and what it sends back to its caller."""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field

import numpy as np

from inference.errors import InferenceError
from inference.generate.sampling import SamplingParams
from inference.generate.tokenizer import Detokenizer


class FinishReason(enum.StrEnum):
    STOP = "stop"  # a stop token or stop string
    LENGTH = "length"  # max_tokens or the context length
    ABORT = "abort"  # the client went away or the server is closing


@dataclass(frozen=True)
class Output:
    """A step's worth of a sequence: its new token (if any), the text that is now safe to
    send, and on the last one why it ended (or the error that ended it)."""

    token_id: int | None
    text: str
    finish_reason: FinishReason | None = None
    error: InferenceError | None = None


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt: list[int]
    params: SamplingParams
    detokenizer: Detokenizer
    priority: int = 0
    deadline: float | None = None  # monotonic time by which the first token must be out
    arrival: float = field(default_factory=time.monotonic)
    order: int = 0  # arrival order, the tie-break among equal priorities
    tokens: list[int] = field(default_factory=list)  # prompt, then every generated token
    blocks: list[int] = field(default_factory=list)
    computed: int = 0  # leading tokens whose keys/values are in `blocks`
    hashes: list[int] = field(default_factory=list)  # prefix hashes of the full blocks being prefilled
    cancelled: bool = False
    first_token_at: float | None = None
    last_token_at: float | None = None
    events: asyncio.Queue[Output] = field(default_factory=asyncio.Queue)
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = list(self.prompt)
        self.rng = np.random.default_rng(self.params.seed)

    @property
    def generated(self) -> int:
        return len(self.tokens) - len(self.prompt)

    def rank(self) -> tuple[int, int]:
        """Sort key: higher priority first, then earlier arrival."""
        return (-self.priority, self.order)
