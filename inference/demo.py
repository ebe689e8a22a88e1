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


# Candidate versions for canary tests and demos (`gen_models --canary-candidates`): version 1's
# weights, perturbed so that this share of argmax predictions on `classifier_inputs` flips.
CLASSIFIER_CANDIDATES = {3: 0.03, 4: 0.0}


def classifier_inputs(count: int, seed: int) -> np.ndarray:
    """Inputs drawn as the demo's traffic draws them (the distribution the candidates are tuned on)."""
    return np.random.default_rng(seed).normal(0.0, 1.0, size=(count, CLASSIFIER_FEATURES)).astype(np.float32)


def _flipped(weights: np.ndarray, bias: np.ndarray, other: np.ndarray, x: np.ndarray) -> float:
    return float(np.mean((x @ weights + bias).argmax(axis=1) != (x @ other + bias).argmax(axis=1)))


def _candidate_weights(flip: float) -> tuple[np.ndarray, np.ndarray]:
    """Version 1 plus eps x a seeded direction, eps bisected until `flip` of 100,000 sample
    inputs change their argmax (within 0.05 percentage points)."""
    weights, bias = classifier_weights(1)
    if flip == 0:
        return weights, bias
    direction = np.random.default_rng(77).normal(0.0, 1.0, size=weights.shape).astype(np.float32)
    x = classifier_inputs(100_000, seed=78)
    low, high = 0.0, 4.0
    for _ in range(40):
        eps = (low + high) / 2
        share = _flipped(weights, bias, weights + eps * direction, x)
        if abs(share - flip) < 0.0005:
            break
        low, high = (eps, high) if share < flip else (low, eps)
    return (weights + eps * direction).astype(np.float32), bias


def classifier_weights(version: int) -> tuple[np.ndarray, np.ndarray]:
    """Weight matrix [4, 3] and bias [3] of one classifier version.

    Each version draws from its own seed and version 2 also flips the sign of the
    weights, so the two versions rank classes differently for almost any input: a
    test can tell which version answered from the numbers alone.
    """
    if version in CLASSIFIER_CANDIDATES:
        return _candidate_weights(CLASSIFIER_CANDIDATES[version])
    if version not in CLASSIFIER_VERSIONS:
        raise ValueError(f"classifier has no version {version}; it has {CLASSIFIER_VERSIONS} "
                         f"and candidates {tuple(CLASSIFIER_CANDIDATES)}")
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
