"""The demo models' parameters, shared by the generator and by tests.

The weights live here, not in the .onnx files alone, so that `reference` can say in
plain numpy what a served model must answer: a test that compares the server's output
with `reference` checks the whole path (parsing, batching, ORT, encoding) against
arithmetic that shares none of it.
"""

from __future__ import annotations

import numpy as np

CLASSIFIER = "classifier"
CLASSIFIER_VERSIONS = (1, 2)
CLASSIFIER_FEATURES = 4
CLASSIFIER_CLASSES = 3

RESNET50 = "resnet50"
RESNET50_INPUT_SHAPE = (3, 224, 224)
RESNET50_CLASSES = 1000


def classifier_weights(version: int) -> tuple[np.ndarray, np.ndarray]:
    """Weight matrix [4, 3] and bias [3] of one classifier version.

    Each version draws from its own seed and version 2 also flips the sign of the
    weights, so the two versions rank classes differently for almost any input: a
    test can tell which version answered from the numbers alone.
    """
    if version not in CLASSIFIER_VERSIONS:
        raise ValueError(f"classifier has no version {version}; it has {CLASSIFIER_VERSIONS}")
    rng = np.random.default_rng(1000 + version)
    sign = 1.0 if version == 1 else -1.0
    weights = sign * rng.uniform(0.5, 2.0, size=(CLASSIFIER_FEATURES, CLASSIFIER_CLASSES))
    weights[:, 0] *= -1.0  # mixed signs keep the softmax away from a constant argmax
    bias = rng.uniform(-0.5, 0.5, size=CLASSIFIER_CLASSES)
    return weights.astype(np.float32), bias.astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    probabilities: np.ndarray = exp / exp.sum(axis=-1, keepdims=True)
    return probabilities


def reference(model: str, version: int, x: np.ndarray) -> np.ndarray:
    """What `model` at `version` must output for the batch `x`, computed in numpy."""
    if model != CLASSIFIER:
        raise ValueError(f"no numpy reference for model {model!r}")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != CLASSIFIER_FEATURES:
        raise ValueError(f"classifier input must have shape [batch, {CLASSIFIER_FEATURES}], got {list(x.shape)}")
    weights, bias = classifier_weights(version)
    return softmax(x @ weights + bias).astype(np.float32)
