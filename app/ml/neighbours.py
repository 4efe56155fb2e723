"""Nearest stored vectors of a query vector, in the original embedding space (not a 2-D map).

One search for every caller: the Explore page (neighbours of a clicked tile) and the Segment page
(neighbours of an upload). Brute force over float32 vectors held in memory: one matrix-vector
product and a partial sort, milliseconds for 10^5 tiles.
"""

from __future__ import annotations

import numpy as np

__all__ = ["METRICS", "nearest_rows"]

METRICS: tuple[str, ...] = ("cosine", "euclidean")


def nearest_rows(
    data: np.ndarray,
    query: np.ndarray,
    k: int,
    *,
    metric: str = "cosine",
    norms: np.ndarray | None = None,
    sqnorms: np.ndarray | None = None,
    exclude: int | None = None,
) -> list[tuple[int, float]]:
    """The ``k`` rows of ``data`` (n, d) nearest ``query`` (d,), nearest first, as (row, score):
    cosine similarity for ``metric="cosine"``, Euclidean distance for ``"euclidean"``.

    ``norms`` (L2 norms, 0 replaced by 1) and ``sqnorms`` (squared norms) of the rows may be
    passed precomputed. ``exclude`` is the query's own row when it is a stored one: it is left
    out, and its stored norm stands for the query's.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be 'cosine' or 'euclidean', not {metric!r}")
    q = np.asarray(query, np.float32).ravel()
    n = data.shape[0]
    k = max(0, min(int(k), n - (exclude is not None)))
    if k == 0:
        return []
    dots = data @ q
    if metric == "euclidean":
        if sqnorms is None:
            sqnorms = np.einsum("ij,ij->i", data, data)
        qsq = float(sqnorms[exclude]) if exclude is not None else float(q @ q)
        score = np.sqrt(np.maximum(sqnorms - 2 * dots + qsq, 0.0))
        key = score.copy()
    else:
        if norms is None:
            norms = np.linalg.norm(data, axis=1)
            norms[norms == 0] = 1.0
        qn = float(norms[exclude]) if exclude is not None else float(np.linalg.norm(q)) or 1.0
        score = dots / (norms * qn)
        key = -score
    if exclude is not None:
        key[exclude] = np.inf
    rows = np.argpartition(key, k - 1)[:k] if k < n else np.arange(n)
    rows = rows[np.argsort(key[rows], kind="stable")]
    return [(int(i), float(score[i])) for i in rows if i != exclude][:k]
