"""The request bodies of the OpenAI API and of KServe v2 generate, validated by pydantic.

Fields clients send that we do not act on (`user`, `presence_penalty`, ...) are ignored, as
vLLM and OpenAI's own server ignore what they do not know; fields whose value would change the
answer and that we cannot honour (`n` > 1, `logprobs`, `tools`) are refused by name.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from inference.generate.tokenizer import render_chat

MAX_STOP = 4


class _Body(BaseModel):
    # strict: "max_tokens": "5" is a wrong type, as OpenAI says, not a number to coerce.
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class StreamOptions(_Body):
    include_usage: bool = False


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class _Sampling(_Body):
    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: int | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP)] | None = None
    n: Literal[1] = 1
    # vLLM's extension, for benchmarks that need a fixed output length.
    ignore_eos: bool = False
    logprobs: Literal[False] | None = None
    echo: Literal[False] = False

    @model_validator(mode="after")
    def _stream_options(self) -> _Sampling:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    tools: None = None

    def prompt_text(self) -> str:
        return render_chat([(m.role if m.role != "developer" else "system", m.text()) for m in self.messages])

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    # One prompt per request: a string, or token ids as OpenAI also accepts.
    prompt: Annotated[str, Field(min_length=1)] | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]

    def requested_max_tokens(self) -> int | None:
        # The legacy completions endpoint defaults to 16 tokens, as OpenAI's does.
        return 16 if self.max_tokens is None else self.max_tokens


class GenerateParameters(_Body):
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: int | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP)] | None = None
    ignore_eos: bool = False


class GenerateRequest(_Body):
    """KServe v2 / Triton `generate`: `text_input` and sampling `parameters`."""

    text_input: Annotated[str, Field(min_length=1)]
    parameters: GenerateParameters = GenerateParameters()


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    """`stop` as both APIs accept it (one string or a list), empty strings dropped."""
    stops = [stop] if isinstance(stop, str) else (stop or [])
    return tuple(s for s in stops if s)


def error_param(loc: tuple[int | str, ...]) -> str:
    """pydantic's location as OpenAI names a parameter: messages[0].content."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "int", "float", "bool") or "[" in part:
            continue  # the union member pydantic tried, not a field
        else:
            out += f".{part}" if out else str(part)
    return out


# Errors that only say "not this member of a union": another error on the same field says more.
_TYPE_ERRORS = frozenset({"string_type", "int_type", "list_type", "float_type", "bool_type", "model_type", "dict_type"})


def first_error(errors: list[Any]) -> tuple[str, str]:
    """(param, message) for the most useful of pydantic's errors."""
    first = error_param(tuple(errors[0]["loc"]))
    same_field = [e for e in errors if error_param(tuple(e["loc"])) == first]
    error = next((e for e in same_field if e["type"] not in _TYPE_ERRORS), same_field[0])
    param = error_param(tuple(error["loc"]))
    return param, f"Invalid value for '{param}': {error['msg']}" if param else str(error["msg"])
