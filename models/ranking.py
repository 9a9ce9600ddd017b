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
    """Per-user z-scores over the finite entries, so models on different scales can be blended.

    float32 throughout and in few passes (it runs on every scoring block of every component): the masked
    path only where a row has -inf entries (items a model cannot score).
    """
    scores = np.asarray(scores, dtype=np.float32)
    finite = np.isfinite(scores)
    if finite.all():
        mean = scores.mean(axis=1, keepdims=True)
        z = scores - mean
        std = np.sqrt(np.einsum("ij,ij->i", z, z)[:, None] / max(scores.shape[1], 1))
        np.divide(z, std, out=z, where=std > 1e-12)
        z[(std <= 1e-12).ravel()] = 0.0
        return z
    count = np.maximum(finite.sum(axis=1, keepdims=True), 1)
    safe = np.where(finite, scores, np.float32(0))
    mean = safe.sum(axis=1, keepdims=True) / count
    z = np.where(finite, safe - mean, np.float32(0))
    std = np.sqrt(np.einsum("ij,ij->i", z, z)[:, None] / count)
    np.divide(z, std, out=z, where=std > 1e-12)
    z[(std <= 1e-12).ravel()] = 0.0
    z[~finite] = -np.inf
    return z
