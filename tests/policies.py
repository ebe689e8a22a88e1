"""Policy documents the tests apply."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.policy import InvalidPolicy, parse_document


def demo_policy(v1_port: int, v2_port: int, w1: int = 100, w2: int = 0) -> list[dict[str, Any]]:
    return [
        {"kind": "Backend", "name": "classifier-v1", "spec": {"endpoints": [{"address": "127.0.0.1", "port": v1_port}]}},
        {"kind": "Backend", "name": "classifier-v2", "spec": {"endpoints": [{"address": "127.0.0.1", "port": v2_port}]}},
        {"kind": "Service", "name": "classifier", "spec": {"hosts": ["*"], "routes": [{
            "name": "infer", "match": {"prefix": "/v2/models/classifier"},
            "split": [{"backend": "classifier-v1", "weight": w1}, {"backend": "classifier-v2", "weight": w2}],
        }]}},
    ]


def field_problems(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """The (field path, message) of each problem parsing one document finds; it must find some."""
    with pytest.raises(InvalidPolicy) as caught:
        parse_document(raw)
    return [(p.loc, p.msg) for p in caught.value.problems]
