"""The one similarity, used by the training loss (torch, with grad) and by all scoring (numpy or
scipy-sparse, in blocks of rows with bounded memory), and the partner rank built on it."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from settings import SettingsError

METRICS = ("cosine", "euclidean", "dot")  # similarities we rank with (a model may name any of them)


def similarity(a, b, metric: str):
    """Similarity of each row of a [n, dim] to each row of b [m, dim] -> [n, m], higher = closer.

    The one definition, for torch tensors (the loss, with grad) and numpy or scipy-sparse arrays
    (scoring, in blocks): cosine; euclidean = minus the plain distance ||a - b||_2; dot."""
    if metric not in METRICS:
        raise SettingsError(f"setting 'metric' must be one of {', '.join(METRICS)}, got '{metric}'")
    dot = a @ b.T
    dot = dot.toarray() if hasattr(dot, "toarray") else dot  # sparse x sparse (TF-IDF) -> dense [n, m]
    if metric == "dot":
        return dot
    sq_a, sq_b = _squared_norms(a), _squared_norms(b)
    if metric == "cosine":  # as F.normalize: each norm at least 1e-12
        return dot / ((sq_a ** 0.5).clip(min=1e-12)[:, None] * (sq_b ** 0.5).clip(min=1e-12)[None, :])
    # clip: the sqrt's gradient is infinite at 0 (two identical vectors)
    return -(sq_a[:, None] + sq_b[None, :] - 2.0 * dot).clip(min=1e-12) ** 0.5


def block_rows(n_candidates: int, memory_mb: float) -> int:
    """Query rows per block so that a block's temporaries, about 5 arrays of [rows, n_candidates] x 8
    bytes (dot products, distances, comparisons, indices), stay under `memory_mb` (the setting score_memory_mb)."""
    return max(1, int(memory_mb * 2**20 // (40 * max(n_candidates, 1))))


def similarity_blocks(queries, candidates, metric: str, block: int | None = None, memory_mb: float | None = None):
    """(first row, similarities [rows, n_candidates]) for `block` queries at a time (else as many as fit
    in `memory_mb`: block_rows; neither given: all at once): memory is the embeddings plus one block.
    Either input may be a scipy sparse matrix (the TF-IDF baseline); both are scored in float64."""
    block = block or (block_rows(candidates.shape[0], memory_mb) if memory_mb else max(queries.shape[0], 1))
    queries, candidates = _float64(queries), _float64(candidates)
    for s in range(0, queries.shape[0], block):
        yield s, similarity(queries[s:s + block], candidates, metric)


def partner_ranks(queries, candidates, targets=None, *, metric: str, block: int | None = None,
                  memory_mb: float | None = None) -> np.ndarray:
    """1-based rank of each query's true candidate (`targets[i]`, default i) among all candidates.

    rank = 1 + (candidates strictly closer) + half the other candidates at exactly the same score,
    so a constant model scores the chance level (n+1)/2, not 1. Scored in blocks (similarity_blocks).
    """
    targets = np.arange(queries.shape[0]) if targets is None else np.asarray(targets)
    ranks = np.empty(queries.shape[0], dtype=np.float64)
    for s, sim in similarity_blocks(queries, candidates, metric, block, memory_mb):
        true = sim[np.arange(len(sim)), targets[s:s + len(sim)]][:, None]
        better = (sim > true).sum(1)
        ties = (sim == true).sum(1) - 1
        ranks[s:s + len(sim)] = 1 + better + 0.5 * ties
    return ranks


def _squared_norms(x):
    if sp.issparse(x):  # [n, vocab] -> [n]
        return np.asarray(x.multiply(x).sum(1)).ravel()
    return (x * x).sum(-1)


def _float64(x):
    return x.astype(np.float64) if sp.issparse(x) else np.asarray(x, dtype=np.float64)
