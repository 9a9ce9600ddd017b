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


def bootstrap_indices(n_users: int, n_boot: int, seed: int) -> np.ndarray:
    """Seeded bootstrap resamples of users: (n_boot, n_users) row indices."""
    return np.random.default_rng(seed).integers(0, n_users, size=(n_boot, n_users))


def paired_lift(model_values: np.ndarray, base_values: np.ndarray, resamples: np.ndarray,
                level: float = 95.0) -> tuple[float, float, float]:
    """Relative lift mean(model)/mean(baseline) - 1, with a paired bootstrap ``level`` % CI over the same users."""
    if len(base_values) == 0 or (base := base_values.mean()) <= 0:
        return float("nan"), float("nan"), float("nan")
    point = float(model_values.mean() / base - 1.0)
    boot_base = base_values[resamples].mean(axis=1)
    boot = model_values[resamples].mean(axis=1) / np.where(boot_base > 0, boot_base, np.nan) - 1.0
    tail = (100.0 - level) / 2
    lo, hi = np.nanpercentile(boot, [tail, 100.0 - tail])
    return point, float(lo), float(hi)
