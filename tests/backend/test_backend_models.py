"""The demo model generator: layout, idempotence, and agreement with the numpy reference."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnxruntime as ort
from backend_harness import REPO_ROOT

from inference.config import load_config
from inference.demo import reference
from inference.gen_models import generate


def test_generate_is_idempotent_and_repairs_changed_files(tmp_path) -> None:
    written = generate(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "classifier/1/model.onnx", "classifier/2/model.onnx", "classifier/config.yaml",
        *(f"tiny-llama/1/{name}" for name in (
            "config.json", "generation_config.json", "model.onnx", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        )),
        "tiny-llama/config.yaml",
    ]
    mtime = (tmp_path / "classifier/1/model.onnx").stat().st_mtime_ns
    assert generate(tmp_path) == []
    assert (tmp_path / "classifier/1/model.onnx").stat().st_mtime_ns == mtime
    (tmp_path / "classifier/2/model.onnx").write_bytes(b"garbage")
    assert generate(tmp_path) == [tmp_path / "classifier/2/model.onnx"]


def test_generated_graphs_compute_the_reference(tmp_path) -> None:
    generate(tmp_path)
    config = load_config(tmp_path / "classifier")
    assert config.max_batch_size == 8 and config.input[0].name == "INPUT0" and config.output[0].dims == [3]
    x = np.random.default_rng(5).standard_normal((6, 4)).astype(np.float32)
    outputs = {}
    for version in (1, 2):
        session = ort.InferenceSession(str(tmp_path / f"classifier/{version}/model.onnx"), providers=["CPUExecutionProvider"])
        outputs[version] = session.run(["OUTPUT0"], {"INPUT0": x})[0]
        np.testing.assert_allclose(outputs[version], reference("classifier", version, x), rtol=1e-5, atol=1e-6)
    assert (outputs[1].argmax(axis=1) != outputs[2].argmax(axis=1)).any()


def test_cli_writes_the_repository(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "inference.gen_models", "--out", str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "classifier/config.yaml").is_file() and not (tmp_path / "resnet50").exists()
