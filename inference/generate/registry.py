"""The generative models of a repository: loading, warming and serving one engine each."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from inference.errors import NotFound, Unavailable
from inference.generate.checkpoint import ONNX_MODEL, TOKENIZER, read_spec
from inference.generate.config import is_generative, load_config
from inference.generate.engine import Engine
from inference.generate.metrics import GenerationStats
from inference.generate.runner import CausalLM
from inference.generate.sampling import SamplingParams
from inference.generate.tokenizer import TextTokenizer

log = logging.getLogger("inference.generate")


class GenerativeModels:
    def __init__(self, root: Path, providers: tuple[str, ...], threads: int, step_delay_s: float = 0.0) -> None:
        self.root = root
        self.step_delay_s = step_delay_s
        self.providers = providers
        self.threads = threads
        self._engines: dict[str, Engine] = {}
        self._executors: dict[str, ThreadPoolExecutor] = {}

    def names_on_disk(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if is_generative(p))

    def loaded(self) -> list[Engine]:
        return [self._engines[name] for name in sorted(self._engines)]

    def get(self, name: str) -> Engine:
        engine = self._engines.get(name)
        if engine is None:
            if name in self.names_on_disk():
                raise Unavailable(f"model {name!r} is not loaded")
            raise NotFound(f"The model `{name}` does not exist.")
        return engine

    async def load(self, name: str) -> Engine:
        """Open the highest version on disk, warm it with a short generation, start serving."""
        if name in self._engines:
            return self._engines[name]
        model_dir = self.root / name
        config = load_config(model_dir)
        versions = sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and (p / ONNX_MODEL).is_file())
        if not versions:
            raise NotFound(f"model {name!r} has no version directory with {ONNX_MODEL}")
        version_dir = model_dir / str(versions[-1])
        spec = read_spec(version_dir)
        if config.max_model_len > spec.max_position_embeddings:
            raise ValueError(
                f"model {name!r}: max_model_len {config.max_model_len} exceeds the checkpoint's {spec.max_position_embeddings} positions"
            )
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"gen-{name}")
        loop = asyncio.get_running_loop()
        try:
            lm = await loop.run_in_executor(executor, CausalLM, version_dir / ONNX_MODEL, self.providers, self.threads, spec.num_layers)
            tokenizer = TextTokenizer.load(version_dir / TOKENIZER)
            engine = Engine(config, spec, lm, tokenizer, executor, step_delay_s=self.step_delay_s)
            engine.start()
            await self._warm(engine)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._engines[name], self._executors[name] = engine, executor
        log.info(
            "generative model %s version %d ready on %s: %d KV blocks of %d tokens, context %d, up to %d sequences",
            name, versions[-1], lm.provider, engine.pool.num_blocks, config.block_size, config.max_model_len, config.max_num_seqs,
        )
        return engine

    @staticmethod
    async def _warm(engine: Engine) -> None:
        # One prefill and a few decode steps: ORT allocates its arenas and picks kernels on the
        # first runs, which would otherwise land on the first user's time to first token.
        seq = engine.submit("warmup", engine.tokenizer.encode("warm up the engine"), SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
        async for out in engine.outputs(seq):
            if out.error is not None:
                raise out.error
        engine.stats = GenerationStats(engine.config.name)

    async def close(self) -> None:
        for name, engine in list(self._engines.items()):
            await engine.close()
            self._executors.pop(name).shutdown(wait=False)
        self._engines.clear()
