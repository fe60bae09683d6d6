"""Labels and probabilities from logits, on the host (numpy)."""

from __future__ import annotations

import numpy as np


def labels_from_logits(logits: np.ndarray) -> np.ndarray:
    """uint8 (H, W) labels from float32 (K, H, W) logits: argmax, or sigmoid > 0.5 when K = 1."""
    if logits.shape[0] == 1:
        return (logits[0] > 0).astype(np.uint8)
    return np.argmax(logits, axis=0).astype(np.uint8)


def probabilities_from_logits(logits: np.ndarray) -> np.ndarray:
    """float16 (K, H, W) softmax (sigmoid when K = 1) of float32 logits."""
    if logits.shape[0] == 1:
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float16)
    shifted = np.exp(logits - logits.max(axis=0, keepdims=True))
    return (shifted / shifted.sum(axis=0, keepdims=True)).astype(np.float16)
