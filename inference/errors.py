"""Errors the inference core raises; each transport maps them to its own status codes."""

from __future__ import annotations


class InferenceError(Exception):
    """Base class. `str(error)` is the message clients see, so it must say what is wrong."""


class NotFound(InferenceError):
    """Unknown model or version (HTTP 404, gRPC NOT_FOUND)."""


class InvalidInput(InferenceError):
    """The request is malformed or does not match the model (HTTP 400, gRPC INVALID_ARGUMENT)."""


class Unavailable(InferenceError):
    """Not ready, draining, or the queue is full: try again, maybe elsewhere (HTTP 503, gRPC UNAVAILABLE)."""


class Throttled(InferenceError):
    """Too many requests: come back after `retry_after_s` (HTTP 429 with Retry-After, gRPC RESOURCE_EXHAUSTED)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(InferenceError):
    """The request's timeout expired before it ran (HTTP 504, gRPC DEADLINE_EXCEEDED)."""


class InternalError(InferenceError):
    """The model failed to run, or an injected fault (HTTP 500, gRPC INTERNAL)."""


class Unauthenticated(InferenceError):
    """Model control needs a token the request did not carry, or carried wrong (HTTP 401, gRPC UNAUTHENTICATED)."""


class Forbidden(InferenceError):
    """Model control is off in this process (HTTP 403, gRPC PERMISSION_DENIED)."""
