"""95% intervals over test units (windows or documents) x seeds, by the bootstrap.

A row's evaluation stores, per seed, the summed NLL and the byte count of every unit it scored
(``evaluation.bpb.Units``), in the same unit order for every seed and every row scored on the same
target bytes (checked by the targets' hash). A replicate resamples seeds and units with replacement and
computes pooled bits per byte (sum of NLL / sum of bytes / ln 2); a paired difference uses the same
resampled seeds and units for both rows, so what the rows share (the test bytes, the data order of a
seed) cancels. Percentile intervals; a difference whose interval contains 0 is "not separated".

The same machinery gives intervals on a mean over documents (a long-context task's accuracy): units stored as
``{"sum": [...], "count": [...]}`` (per document: 1 if it was answered right, and 1) pool to sum / count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LN2 = math.log(2)
REPLICATES = 2000


@dataclass(frozen=True)
class Units:
    """One row's per-unit sums: ``nll`` and ``bytes`` [seeds, units], the seeds in order, the targets' hash.
    ``divisor``: LN2 for bits per byte; 1 for a mean (then ``nll`` holds the sums and ``bytes`` the counts)."""

    seeds: tuple[int, ...]
    nll: np.ndarray
    bytes: np.ndarray
    sha: str
    divisor: float = LN2

    @property
    def bpb(self) -> float:
        """The pooled value: bits per byte, or the mean of a mean metric."""
        return float(self.nll.sum() / self.bytes.sum() / self.divisor)


@dataclass(frozen=True)
class Interval:
    value: float
    lo: float
    hi: float

    @property
    def separated(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def text(self, digits: int = 4, signed: bool = False) -> str:
        f = f"{{:{'+' if signed else ''}.{digits}f}}"
        return f"{f.format(self.value)} [{f.format(self.lo)}, {f.format(self.hi)}]"


def collect(per_seed: dict[int, dict]) -> Units | None:
    """``{seed: units JSON}`` -> Units, None when no seed has units. Raises when the seeds were scored on
    different target bytes (they must share windows / documents to be pooled)."""
    per_seed = {s: u for s, u in sorted(per_seed.items()) if u}
    if not per_seed:
        return None
    mean = {"sum" in u for u in per_seed.values()}
    if len(mean) > 1:
        raise ValueError(f"the seeds {sorted(per_seed)} mix bits-per-byte units and mean units")
    top, bottom = ("sum", "count") if mean.pop() else ("nll", "bytes")
    shas = {u.get("targets_sha256") for u in per_seed.values()}
    counts = {len(u[top]) for u in per_seed.values()}
    if len(shas) > 1 or len(counts) > 1:
        raise ValueError(f"the seeds {sorted(per_seed)} were scored on different target bytes (hashes {sorted(shas)}); "
                         "re-run their evaluations with the same settings")
    nll = np.array([u[top] for u in per_seed.values()], dtype=np.float64)
    count = np.array([u[bottom] for u in per_seed.values()], dtype=np.float64)
    return Units(tuple(per_seed), nll, count, shas.pop() or "", 1.0 if top == "sum" else LN2)


def _replicates(n_seeds: int, n_units: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_seeds, (REPLICATES, n_seeds)), rng.integers(0, n_units, (REPLICATES, n_units))


def _pooled(u: Units, s_idx: np.ndarray, w_idx: np.ndarray) -> np.ndarray:
    """Bits per byte of every replicate: [REPLICATES]."""
    # per seed and replicate: sums over the resampled units, then over the resampled seeds
    nll = np.stack([u.nll[:, w].sum(1) for w in w_idx], 1)  # [seeds, R]
    cnt = np.stack([u.bytes[:, w].sum(1) for w in w_idx], 1)
    r = np.arange(len(w_idx))
    return nll[s_idx.T, r].sum(0) / cnt[s_idx.T, r].sum(0) / u.divisor


def interval(u: Units, seed: int = 0) -> Interval:
    s_idx, w_idx = _replicates(len(u.seeds), u.nll.shape[1], seed)
    reps = _pooled(u, s_idx, w_idx)
    return Interval(u.bpb, float(np.percentile(reps, 2.5)), float(np.percentile(reps, 97.5)))


def common_seeds(a: Units, b: Units) -> list[int]:
    """The seeds a paired difference of ``a`` and ``b`` is taken over: those both rows have, in ``a``'s order."""
    return [s for s in a.seeds if s in b.seeds]


def paired(a: Units, b: Units, seed: int = 0) -> Interval:
    """a - b in bits per byte with a paired bootstrap interval over the seeds both have and the units."""
    if a.sha != b.sha or a.nll.shape[1] != b.nll.shape[1] or a.divisor != b.divisor:
        raise ValueError("the two rows were not scored on the same target bytes (different units or hashes): "
                         "a paired difference is not defined")
    common = common_seeds(a, b)
    if not common:
        raise ValueError(f"no seed in common (rows have {list(a.seeds)} and {list(b.seeds)})")
    pick = lambda u: Units(tuple(common), u.nll[[u.seeds.index(s) for s in common]],  # noqa: E731
                           u.bytes[[u.seeds.index(s) for s in common]], u.sha, u.divisor)
    a, b = pick(a), pick(b)
    s_idx, w_idx = _replicates(len(common), a.nll.shape[1], seed)
    reps = _pooled(a, s_idx, w_idx) - _pooled(b, s_idx, w_idx)
    return Interval(a.bpb - b.bpb, float(np.percentile(reps, 2.5)), float(np.percentile(reps, 97.5)))


__all__ = ["Interval", "Units", "collect", "common_seeds", "interval", "paired"]
