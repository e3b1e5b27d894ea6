"""The exact decoder: the objective as an integer program (``scipy.optimize.milp``)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

from detgroup.decoder.clusters import components

# The exact program is exponential in the worst case (see BENCHMARKS.md, "Partition decoder").
EXACT_MAX_NODES = 30


def exact_dense(w: np.ndarray, lp: np.ndarray | None) -> np.ndarray:
    """Optimal partition of the objective by integer programming (small N only).

    One binary x_ij per pair ("same cluster"); transitivity x_ij + x_jk - x_ik <= 1 is added
    lazily: solve, add the triangle inequalities the solution violates, solve again. The
    final solution satisfies all of them, so it is optimal for the full program. With class
    log-probs, binaries y_ic (box i takes category c, one per box) and x_ij + y_ic - y_jc <= 1
    (both ways) make a cluster share one category.
    """
    n = w.shape[0]
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    iu, ju = np.triu_indices(n, 1)
    m = iu.size
    pair = np.zeros((n, n), dtype=np.int64)
    pair[iu, ju] = np.arange(m)
    pair[ju, iu] = np.arange(m)
    cost = -w[iu, ju]
    constraints = []
    if lp is not None:
        c = lp.shape[1]
        y = m + np.arange(n * c).reshape(n, c)  # y[i, c] = 1 if box i takes category c
        pp = np.repeat(np.arange(m), c)
        cc = np.tile(np.arange(c), m)
        rows = np.tile(np.arange(2 * pp.size), 3)
        cols = np.concatenate([pp, pp, y[iu[pp], cc], y[iu[pp], cc], y[ju[pp], cc], y[ju[pp], cc]])
        vals = np.concatenate(
            [np.ones(2 * pp.size), np.repeat([1.0, -1.0], pp.size), np.repeat([-1.0, 1.0], pp.size)]
        )
        cost = np.concatenate([cost, -lp.ravel()])
        shape = (2 * pp.size, cost.size)
        constraints.append(LinearConstraint(sp.csr_matrix((vals, (rows, cols)), shape), -np.inf, 1))
        one_each = sp.csr_matrix(
            (np.ones(n * c), (np.repeat(np.arange(n), c), y.ravel())), shape=(n, cost.size)
        )
        constraints.append(LinearConstraint(one_each, 1.0, 1.0))
    while True:
        result = milp(
            cost, integrality=np.ones(cost.size), bounds=Bounds(0.0, 1.0), constraints=constraints
        )
        if result.status != 0:
            raise RuntimeError(f"exact decoder: milp failed: {result.message}")
        same = np.zeros((n, n), dtype=bool)
        x = result.x[:m] > 0.5
        same[iu[x], ju[x]] = same[ju[x], iu[x]] = True
        # triangles i - j - k with i, k both joined to j but not to each other (i < k)
        i, j, k = np.nonzero(same[:, :, None] & same[None, :, :] & ~same[:, None, :])
        cut = i < k
        i, j, k = i[cut], j[cut], k[cut]
        if i.size == 0:
            return components(n, iu[x], ju[x])
        rows = np.tile(np.arange(i.size), 3)
        cols = np.concatenate([pair[i, j], pair[j, k], pair[i, k]])
        vals = np.repeat([1.0, 1.0, -1.0], i.size)
        cuts = sp.csr_matrix((vals, (rows, cols)), shape=(i.size, cost.size))
        constraints.append(LinearConstraint(cuts, -np.inf, 1.0))
