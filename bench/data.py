"""Synthetic inputs for the benchmarks: tiles that look roughly aerial (smooth ground, bright
rectangular roofs, a mask of them) and clustered vectors. Cheap, seeded, O(1) memory in the
number of tiles (tile i is a flipped / rolled copy of one of a small pool), so 10^4-tile runs
measure the pipeline, not the generator."""

from __future__ import annotations

from functools import cached_property

import numpy as np

POOL = 32


def _tile(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (size, size, 3) uint8 image and its (size, size) uint8 {0, 1} building mask."""
    cells = max(2, size // 32)
    coarse = rng.normal(0, 1, (cells, cells, 3))
    reps = -(-size // cells)
    ground = np.kron(coarse, np.ones((reps, reps, 1)))[:size, :size]
    base = np.array([95.0, 110.0, 80.0]) + rng.normal(0, 15, 3)
    img = base + 18 * ground + rng.normal(0, 8, (size, size, 3))
    mask = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(0, 8))):
        w, h = (int(v) for v in rng.integers(size // 16, size // 5, 2))
        x, y = (int(v) for v in rng.integers(0, size - max(w, h), 2))
        mask[y:y + h, x:x + w] = 1
        img[y:y + h, x:x + w] = np.array([205.0, 195.0, 180.0]) + rng.normal(0, 10, 3)
    return np.clip(img, 0, 255).astype(np.uint8), mask


class TilePool:
    """``n`` distinct-id tiles of ``size``² with the ``TileDataset`` interface that
    ``extract_embeddings`` uses (``table``, ``image(id)``, ``mask(id)``)."""

    def __init__(self, n: int, size: int = 256, seed: int = 0, pool: int = POOL) -> None:
        rng = np.random.default_rng(seed)
        self.n, self.size = int(n), int(size)
        made = [_tile(rng, size) for _ in range(min(pool, n))]
        self._images = [m[0] for m in made]
        self._masks = [m[1] for m in made]
        self.ids = [f"bench_t{i:06d}" for i in range(self.n)]
        self._index = {t: i for i, t in enumerate(self.ids)}

    @cached_property
    def table(self):
        import pandas as pd

        splits = np.array(["train", "val", "test"])[np.arange(self.n) % 3]
        return pd.DataFrame({
            "tile_id": self.ids, "source": "bench", "scene_id": [f"s{i // 16}" for i in
                                                                 range(self.n)],
            "split": splits, "size": self.size, "x": 0, "y": 0,
        })

    def _variant(self, arr: np.ndarray, i: int) -> np.ndarray:
        k = i // len(self._images)
        out = np.rot90(arr, k % 4)
        return np.ascontiguousarray(out[:, ::-1] if (k // 4) % 2 else out)

    def image(self, tile_id: str) -> np.ndarray:
        i = self._index[tile_id]
        return self._variant(self._images[i % len(self._images)], i)

    def mask(self, tile_id: str) -> np.ndarray:
        i = self._index[tile_id]
        return self._variant(self._masks[i % len(self._masks)], i)

    def stack(self, ids: list[str] | None = None) -> np.ndarray:
        """The tiles as one (n, size, size, 3) float32 array (what ``model.predict`` eats)."""
        ids = self.ids if ids is None else ids
        return np.stack([self.image(t) for t in ids]).astype(np.float32)


def images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` uint8 (size, size, 3) images (a pool of at most 8 distinct ones, rotated)."""
    pool = TilePool(n, size, seed, pool=min(8, n))
    return [pool.image(t) for t in pool.ids]


def blobs(n: int, dims: int, seed: int = 0, centers: int = 10) -> np.ndarray:
    """Clustered float32 vectors, non-negative like ReLU activations (``make_blobs``)."""
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(n_samples=n, n_features=dims, centers=centers, cluster_std=2.0,
                      random_state=seed)
    X -= X.min()
    return X.astype(np.float32)
