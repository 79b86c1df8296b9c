"""A second estimate of the compute-optimal frontier, from every (size, budget) point of an architecture at
once: ``L(N, D) = E + A n^-a + B d^-b`` (Hoffmann et al. 2022, approach 3), with N the size's training FLOPs
per byte and D the bytes it trained on (C = N D), n and d those over their medians. Minimised over N at each
C it gives the frontier ``L*(C)`` and the optimal size ``N*(C) ∝ C^(b / (a + b))``, which, unlike the best
measured size at each budget, can move past the largest size measured. With three sizes the size term is
weakly determined: its bootstrap intervals say how weakly.

The fit is robust least squares (soft L1, as approach 3's Huber loss) from a grid of starting points, keeping
the lowest cost; E is bounded to [0, min L].
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Joint:
    E: float
    A: float
    a: float
    B: float
    b: float
    n0: float  # the FLOPs per byte and bytes that n = N / n0 and d = D / d0 are measured in
    d0: float
    at_bound: tuple[str, ...] = ()  # parameters the fit left at a bound: not determined by the points

    def loss(self, N, D):
        return self.E + self.A * np.power(np.asarray(N) / self.n0, -self.a) \
            + self.B * np.power(np.asarray(D) / self.d0, -self.b)

    def optimal_n(self, C):
        """The FLOPs per byte that minimise the loss at ``C`` training FLOPs."""
        c = np.asarray(C) / (self.n0 * self.d0)
        g = (self.a * self.A / (self.b * self.B)) ** (1.0 / (self.a + self.b))
        return self.n0 * g * np.power(c, self.b / (self.a + self.b))

    def __call__(self, C):
        N = self.optimal_n(C)
        return self.loss(N, np.asarray(C) / N)


def fit_joint(N: np.ndarray, D: np.ndarray, L: np.ndarray, start: Joint | None = None) -> Joint:
    """``L(N, D)`` fitted to points of at least two sizes and three budgets (see the module). ``start``: one
    starting point instead of the grid (a bootstrap replicate starts from the point estimate)."""
    from scipy.optimize import least_squares

    n0, d0 = float(np.median(N)), float(np.median(D))
    n, d, top = N / n0, D / d0, float(L.min())

    def residual(x):
        E, lnA, a, lnB, b = x
        return E + np.exp(lnA) * n ** -a + np.exp(lnB) * d ** -b - L

    lo, hi = [0.0, -30.0, 0.02, -30.0, 0.02], [top * 0.999, 30.0, 3.0, 30.0, 3.0]
    if start is not None:
        starts = [[min(start.E, top * 0.99), np.log(start.A * (n0 / start.n0) ** -start.a), start.a,
                   np.log(start.B * (d0 / start.d0) ** -start.b), start.b]]
    else:
        starts = [[top * e, 0.0, a, 0.0, b] for e, a, b in itertools.product((0.3, 0.8), (0.3, 0.8, 1.5),
                                                                             (0.3, 0.8, 1.5))]
    best = None
    for x0 in starts:
        x0 = np.clip(x0, lo, hi)
        r = least_squares(residual, x0, bounds=(lo, hi), loss="soft_l1", f_scale=0.05)
        if best is None or r.cost < best.cost:
            best = r
    E, lnA, a, lnB, b = (float(v) for v in best.x)
    stuck = [name for name, v, low, high in zip(("E", "A", "a", "B", "b"), best.x, lo, hi)
             if min(v - low, high - v) <= 1e-6 * max(1.0, abs(high - low))]
    for name, term in (("A", np.exp(lnA) * n ** -a), ("B", np.exp(lnB) * d ** -b)):
        if term.max() < 1e-4 and name not in stuck:  # a term the fit switched off: its exponent is not determined
            stuck.append(name)
    stuck = tuple(stuck)
    return Joint(E, float(np.exp(lnA)), a, float(np.exp(lnB)), b, n0, d0, stuck)


__all__ = ["Joint", "fit_joint"]
