"""How two answers to the same request agree. Pure: bytes and headers in, figures out.

Tensors (KServe v2, JSON or the binary tensor extension): per row, whether the argmax
agrees, the largest absolute difference and the cosine similarity. Embeddings (OpenAI
`/v1/embeddings`): cosine similarity per vector. Generation (OpenAI chat and completions):
exact match of the text and the common prefix in tokens.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

# The control plane's image has no numpy: tensors are flat lists of floats here, which is
# cheap for what a comparison reads (a few rows of outputs).
BINARY_HEADER = "inference-header-content-length"

_FORMATS: dict[str, str] = {
    "BOOL": "?", "UINT8": "B", "UINT16": "H", "UINT32": "I", "UINT64": "Q", "INT8": "b",
    "INT16": "h", "INT32": "i", "INT64": "q", "FP16": "e", "FP32": "f", "FP64": "d",
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


@dataclass(frozen=True)
class Tensor:
    shape: tuple[int, ...]
    values: list[float]  # row-major

    def rows(self) -> list[list[float]]:
        """The first dimension's rows, each flattened (a scalar or a vector is one row)."""
        count = self.shape[0] if len(self.shape) > 1 else 1
        width = len(self.values) // count if count else 0
        return [self.values[i * width:(i + 1) * width] for i in range(count)]


def _flat(data: Any) -> list[float]:
    if isinstance(data, list):
        return [v for item in data for v in _flat(item)]
    return [float(data)]


def tensors(body: bytes, content_length_header: str | None) -> dict[str, Tensor]:
    """The outputs of a KServe v2 response, JSON or binary, by name."""
    if content_length_header is None:
        header, raw = json.loads(body), b""
    else:
        size = int(content_length_header)
        header, raw = json.loads(body[:size]), body[size:]
    out: dict[str, Tensor] = {}
    offset = 0
    for output in header.get("outputs") or []:
        shape = tuple(int(d) for d in output.get("shape", []))
        binary_size = (output.get("parameters") or {}).get("binary_data_size")
        fmt = _FORMATS.get(output.get("datatype", ""))
        if fmt is None:
            raise Incomparable(f"output {output.get('name')!r}: datatype {output.get('datatype')} is not compared")
        if binary_size is not None:
            chunk = raw[offset:offset + int(binary_size)]
            offset += int(binary_size)
            values = [float(v) for v in struct.unpack(f"<{len(chunk) // struct.calcsize(fmt)}{fmt}", chunk)]
        else:
            values = _flat(output.get("data", []))
        if math.prod(shape) != len(values):
            raise Incomparable(f"output {output.get('name')!r}: shape {list(shape)} holds {len(values)} values")
        out[str(output["name"])] = Tensor(shape, values)
    if not out:
        raise Incomparable("no outputs in the answer")
    return out


def _argmax(row: list[float]) -> int:
    return max(range(len(row)), key=row.__getitem__)


def _cosine(a: list[float], b: list[float]) -> float:
    norms = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    if norms == 0:
        return 1.0 if a == b else 0.0  # two zero vectors are the same vector
    return math.fsum(x * y for x, y in zip(a, b, strict=True)) / norms


def _compare_rows(a: list[list[float]], b: list[list[float]], argmax: bool, result: Comparison) -> None:
    for row_a, row_b in zip(a, b, strict=True):
        if not row_a:
            continue
        result.rows += 1
        if argmax:
            result.argmax_rows += 1
            result.agreed_rows += _argmax(row_a) == _argmax(row_b)
        result.max_abs_diff = max(result.max_abs_diff, max(abs(x - y) for x, y in zip(row_a, row_b, strict=True)))
        cosine = _cosine(row_a, row_b)
        result.min_cosine = min(result.min_cosine, cosine)
        result.cosine_sum += cosine


def compare_tensors(stable: dict[str, Tensor], candidate: dict[str, Tensor]) -> Comparison:
    if stable.keys() != candidate.keys():
        raise Incomparable(f"outputs differ: {sorted(stable)} vs {sorted(candidate)}")
    result = Comparison()
    for name, a in stable.items():
        b = candidate[name]
        if a.shape != b.shape:
            raise Incomparable(f"output {name!r}: shape {list(a.shape)} vs {list(b.shape)}")
        _compare_rows(a.rows(), b.rows(), True, result)
    return result


def compare_embeddings(stable: dict[str, Any], candidate: dict[str, Any]) -> Comparison:
    a = [_flat(d["embedding"]) for d in stable["data"]]
    b = [_flat(d["embedding"]) for d in candidate["data"]]
    if [len(v) for v in a] != [len(v) for v in b]:
        raise Incomparable(f"embeddings of sizes {[len(v) for v in a]} vs {[len(v) for v in b]}")
    result = Comparison()
    _compare_rows(a, b, False, result)
    return result


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

