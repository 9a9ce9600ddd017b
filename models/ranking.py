"""Ranking arithmetic shared by models (tuning) and evaluation (reporting): one implementation."""

from __future__ import annotations

import numpy as np


def discount(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def ndcg_from_hits(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Per-user nDCG from a (users, K) 0/1 matrix of hits in rank order and each user's relevant count."""
    k = hits.shape[1]
    d = discount(k)
    dcg = (hits * d[None, :]).sum(axis=1)
    ideal_len = np.minimum(n_relevant, k)
    idcg = np.concatenate([[0.0], np.cumsum(d)])[ideal_len]
    return np.divide(dcg, idcg, out=np.zeros_like(dcg, dtype=np.float64), where=idcg > 0)


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores per row, best first (stable: ties keep column order)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def standardize_rows(scores: np.ndarray) -> np.ndarray:
    """Per-user z-scores over the finite entries, so models on different scales can be blended."""
    finite = np.isfinite(scores)
    safe = np.where(finite, scores, 0.0)
    count = np.maximum(finite.sum(axis=1, keepdims=True), 1)
    mean = safe.sum(axis=1, keepdims=True) / count
    var = (np.where(finite, (safe - mean) ** 2, 0.0)).sum(axis=1, keepdims=True) / count
    std = np.sqrt(var)
    z = np.divide(safe - mean, std, out=np.zeros_like(safe, dtype=np.float32), where=std > 1e-12)
    return np.where(finite, z, -np.inf).astype(np.float32)
