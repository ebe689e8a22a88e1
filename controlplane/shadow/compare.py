"""How two answers to the same request agree. Pure: bytes and headers in, figures out.

Tensors (KServe v2, JSON or the binary tensor extension): per row, whether the argmax
agrees, the largest absolute difference and the cosine similarity. Embeddings (OpenAI
`/v1/embeddings`): cosine similarity per vector. Generation (OpenAI chat and completions):
exact match of the text and the common prefix in tokens.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

BINARY_HEADER = "inference-header-content-length"

_DTYPES: dict[str, str] = {
    "BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "<i1",
    "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}


class Incomparable(ValueError):
    """The two answers cannot be compared (different shapes, an unknown format)."""


@dataclass
class Comparison:
    """What one pair of answers contributed."""

    rows: int = 0  # tensor rows or embedding vectors compared
    argmax_rows: int = 0  # tensor rows (an embedding has no argmax worth comparing)
    agreed_rows: int = 0  # of argmax_rows, those with the same argmax
    max_abs_diff: float = 0.0
    min_cosine: float = 1.0
    cosine_sum: float = 0.0  # over rows
    generations: int = 0
    exact: int = 0
    prefix_tokens: float = 0.0  # common-prefix tokens, summed over generations


def tensors(body: bytes, content_length_header: str | None) -> dict[str, np.ndarray]:
    """The outputs of a KServe v2 response, JSON or binary, by name."""
    if content_length_header is None:
        header, raw = json.loads(body), b""
    else:
        size = int(content_length_header)
        header, raw = json.loads(body[:size]), body[size:]
    out: dict[str, np.ndarray] = {}
    offset = 0
    for output in header.get("outputs") or []:
        shape = [int(d) for d in output.get("shape", [])]
        binary_size = (output.get("parameters") or {}).get("binary_data_size")
        if binary_size is not None:
            dtype = _DTYPES.get(output["datatype"])
            if dtype is None:
                raise Incomparable(f"output {output['name']!r}: datatype {output['datatype']} is not compared")
            chunk = raw[offset:offset + int(binary_size)]
            offset += int(binary_size)
            array = np.frombuffer(chunk, dtype=dtype)
        else:
            if output.get("datatype") == "BYTES":
                raise Incomparable(f"output {output['name']!r}: BYTES outputs are not compared")
            array = np.asarray(output.get("data", []), dtype=np.float64)
        out[str(output["name"])] = array.astype(np.float64).reshape(shape)
    if not out:
        raise Incomparable("no outputs in the answer")
    return out


def compare_tensors(stable: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> Comparison:
    if stable.keys() != candidate.keys():
        raise Incomparable(f"outputs differ: {sorted(stable)} vs {sorted(candidate)}")
    result = Comparison()
    for name, a in stable.items():
        b = candidate[name]
        if a.shape != b.shape:
            raise Incomparable(f"output {name!r}: shape {list(a.shape)} vs {list(b.shape)}")
        rows_a = a.reshape(a.shape[0] if a.ndim > 1 else 1, -1)
        rows_b = b.reshape(rows_a.shape)
        if rows_a.size == 0:
            continue
        result.rows += rows_a.shape[0]
        result.argmax_rows += rows_a.shape[0]
        result.agreed_rows += int(np.sum(rows_a.argmax(axis=1) == rows_b.argmax(axis=1)))
        result.max_abs_diff = max(result.max_abs_diff, float(np.max(np.abs(rows_a - rows_b))))
        cosines = _cosines(rows_a, rows_b)
        result.min_cosine = min(result.min_cosine, float(cosines.min()))
        result.cosine_sum += float(cosines.sum())
    return result


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.sum(a * b, axis=1)
    # Two zero vectors are the same vector: similarity 1, not a division by zero.
    cosines: np.ndarray = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0),
                                   np.where(np.all(a == b, axis=1), 1.0, 0.0))
    return cosines


def compare_embeddings(stable: dict[str, Any], candidate: dict[str, Any]) -> Comparison:
    a = np.asarray([d["embedding"] for d in stable["data"]], dtype=np.float64)
    b = np.asarray([d["embedding"] for d in candidate["data"]], dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise Incomparable(f"embeddings shape {list(a.shape)} vs {list(b.shape)}")
    cosines = _cosines(a, b)
    return Comparison(rows=a.shape[0], max_abs_diff=float(np.max(np.abs(a - b), initial=0.0)),
                      min_cosine=float(cosines.min(initial=1.0)), cosine_sum=float(cosines.sum()))


def _texts(answer: dict[str, Any]) -> list[tuple[str, int]]:
    """Each choice's text with its token count (the usage's completion tokens, split over choices)."""
    choices = sorted(answer["choices"], key=lambda c: int(c.get("index", 0)))
    texts = [str(c["message"].get("content") or "") if "message" in c else str(c.get("text") or "") for c in choices]
    completion = int((answer.get("usage") or {}).get("completion_tokens") or 0)
    share = completion / len(texts) if texts else 0
    return [(text, round(share)) for text in texts]


def compare_generations(stable: dict[str, Any], candidate: dict[str, Any]) -> Comparison:
    """Exact match per choice, and the common prefix in tokens.

    The answers carry text, not token ids, so the common prefix is counted in characters and
    converted at the stable answer's own rate (completion tokens / characters): exact when
    the prefix is the whole answer, an estimate otherwise.
    """
    a, b = _texts(stable), _texts(candidate)
    if len(a) != len(b):
        raise Incomparable(f"{len(a)} choices vs {len(b)}")
    result = Comparison(generations=len(a))
    for (text_a, tokens_a), (text_b, _) in zip(a, b, strict=True):
        if text_a == text_b:
            result.exact += 1
            result.prefix_tokens += tokens_a
            continue
        common = len(_common_prefix(text_a, text_b))
        result.prefix_tokens += tokens_a * common / len(text_a) if text_a else 0.0
    return result


def _common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return a[:n]


def compare(stable: tuple[bytes, str | None], candidate: tuple[bytes, str | None]) -> Comparison:
    """Compare two successful answers: (body, the binary-tensor header length if any)."""
    if stable[1] is not None or candidate[1] is not None:
        return compare_tensors(tensors(*stable), tensors(*candidate))
    try:
        a, b = json.loads(stable[0]), json.loads(candidate[0])
    except ValueError as exc:
        raise Incomparable(f"an answer is not JSON: {exc}") from None
    if not isinstance(a, dict) or not isinstance(b, dict):
        raise Incomparable("an answer is not a JSON object")
    if "outputs" in a:
        return compare_tensors(tensors(stable[0], None), tensors(candidate[0], None))
    if "choices" in a:
        return compare_generations(a, b)
    if isinstance(a.get("data"), list) and a["data"] and "embedding" in a["data"][0]:
        return compare_embeddings(a, b)
    raise Incomparable("an answer of unknown format (expected KServe v2 outputs, OpenAI choices or embeddings)")


def for_comparison(body: bytes) -> bytes:
    """A generation request made comparable: not streamed (the whole answer at once), and
    seeded when it samples without a seed, so both versions draw the same random numbers.
    Any other request is sent as it came."""
    try:
        request = json.loads(body)
    except ValueError:
        return body
    if not isinstance(request, dict) or not ("messages" in request or "prompt" in request):
        return body
    request.pop("stream_options", None)
    request["stream"] = False
    temperature = request.get("temperature")
    if request.get("seed") is None and (temperature is None or (isinstance(temperature, (int, float))
                                                                and not math.isclose(temperature, 0.0))):
        request["seed"] = 0
    return json.dumps(request).encode()

