"""Local search over partitions: node moves, cluster merges, Kernighan–Lin exchanges.

Works on dense ``[N, N]`` or sparse symmetric CSR weights alike.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from detgroup.decoder.clusters import (
    CHUNK,
    GAIN_TOL,
    class_gain_pairs,
    cluster_sums,
    compact,
    max_of_sums,
)

# gaec-kl also starts its local search from all singletons up to this many boxes: it often
# ends in a better optimum, at several times the cost of the other starts (BENCHMARKS.md).
SINGLETON_START_MAX_NODES = 500


def best_local_search(
    w: np.ndarray | sp.csr_matrix,
    lp: np.ndarray | None,
    starts: list[np.ndarray],
    pair_sums: Callable[[np.ndarray, int], tuple[np.ndarray, ...]],
    *,
    kl_max_nodes: int | None = None,
) -> np.ndarray:
    """Local search from every start (labels [N] each) → the result of highest objective
    (the earliest start on a tie)."""
    best, best_value = starts[0], -np.inf
    for start in starts:
        lab, k = compact(local_search(w, lp, start, kl_max_nodes=kl_max_nodes))
        value = float(pair_sums(lab, k)[0].sum())
        if lp is not None:
            value += float(cluster_sums(lab, k, lp).max(axis=1).sum())
        if value > best_value + GAIN_TOL:
            best, best_value = lab, value
    return best


def local_search(
    w: np.ndarray | sp.csr_matrix,
    lp: np.ndarray | None,
    labels: np.ndarray,
    *,
    kl_max_nodes: int | None = None,
) -> np.ndarray:
    """Improve labels [N] by node moves, cluster merges and Kernighan–Lin exchanges until no
    move gains. w is dense [N, N] or sparse symmetric csr [N, N] with zero diagonal.

    ``kl_max_nodes``: Kernighan–Lin exchanges only for cluster pairs (or splits) of at most
    this many members together (None: all); the sequence of M members costs O(M²).
    """
    swept = None  # labels at the start of the last Kernighan–Lin sweep
    while True:
        labels = _move_nodes(w, lp, labels)
        labels, merged = _merge_clusters(w, lp, labels)
        if merged:
            continue
        dirty = np.ones(labels.size, bool) if swept is None else _changed_nodes(swept, labels)
        swept = labels
        labels, improved = _kl_exchanges(w, lp, labels, dirty, kl_max_nodes)
        if not improved:
            return labels


def _membership(lab: np.ndarray, k: int) -> sp.csr_matrix:
    """Cluster membership, float [K, N] sparse (built directly in CSR form: this runs often)."""
    n = lab.size
    indptr = np.concatenate([[0], np.cumsum(np.bincount(lab, minlength=k))])
    return sp.csr_matrix((np.ones(n), np.argsort(lab, kind="stable"), indptr), shape=(k, n))


def _node_cluster_sums(
    w: np.ndarray | sp.csr_matrix, member: sp.csr_matrix
) -> np.ndarray | sp.spmatrix:
    """Summed weight from every node to every cluster, [N, K] (w is symmetric)."""
    return (member @ w).T


def _positive_entries(s: np.ndarray | sp.spmatrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, columns and values of the entries > GAIN_TOL of a dense or sparse matrix."""
    if sp.issparse(s):
        coo = s.tocoo()
        keep = coo.data > GAIN_TOL
        return coo.row[keep].astype(np.int64), coo.col[keep].astype(np.int64), coo.data[keep]
    r, c = np.nonzero(s > GAIN_TOL)
    return r, c, s[r, c]


def _pick_disjoint(gain: np.ndarray, touched: list[np.ndarray], k: int) -> np.ndarray:
    """Indices of gainful moves to apply together, best first, no two touching one cluster.

    gain [M] per candidate move; touched: arrays [M] of the cluster ids each move touches
    (-1: none). Ties go to the lower candidate index.
    """
    good = np.flatnonzero(gain > GAIN_TOL)
    used = [False] * k
    chosen = []
    columns = [t[good].tolist() for t in touched]
    for m in np.lexsort((good, -gain[good])).tolist():
        ids = [col[m] for col in columns if col[m] >= 0]
        if any(used[c] for c in ids):
            continue
        for c in ids:
            used[c] = True
        chosen.append(m)
    return good[np.array(chosen, dtype=np.int64)]


def _move_nodes(
    w: np.ndarray | sp.csr_matrix, lp: np.ndarray | None, labels: np.ndarray
) -> np.ndarray:
    """Rounds of single-node moves (to an adjacent cluster or to a new singleton).

    Each round takes every node's best move and applies, best first, those whose source and
    target clusters no earlier move of the round touched; such gains add up exactly. The
    cluster-to-node sums are then updated by the moved nodes' rows only. Moving into a cluster
    with non-positive cluster-to-node sum never beats moving out into a new singleton (the
    class term of joining is at most the singleton's), so only positive sums are candidates.
    """
    n = labels.size
    node = np.arange(n)
    lab, k = compact(labels)
    lab = lab.copy()
    st = _membership(lab, k) @ w  # [K, N] summed weight from each cluster to each node
    size = np.bincount(lab, minlength=k)  # [K]
    lsum = None if lp is None else cluster_sums(lab, k, lp)  # [K, C]
    pos_k, pos_i, pos_s = _positive_entries(st)  # positive cluster-to-node sums
    # best summed log-prob of each (cluster + node), kept up to date with the entries
    pos_join = None if lsum is None else max_of_sums(lsum, pos_k, lp, pos_i)
    w_rows = np.repeat(node, np.diff(w.indptr)) if sp.issparse(w) else None  # [nnz]
    while True:
        if w_rows is None:
            own = st[lab, node]  # [N]
        else:  # from w itself: indexing the sparse st costs more than a pass over w
            own = np.bincount(w_rows, w.data * (lab[w_rows] == lab[w.indices]), minlength=n)
        other = pos_k != lab[pos_i]
        cand_k, cand_i, cand_s = pos_k[other], pos_i[other], pos_s[other]
        leave = -own  # [N] gain of leaving the own cluster
        if lsum is not None:
            best = lsum.max(axis=1)  # [K]
            leave = leave + (lsum[lab] - lp).max(axis=1) - best[lab]
            move = cand_s + leave[cand_i] + pos_join[other] - best[cand_k]
            alone = leave + lp.max(axis=1)
        else:
            move = cand_s + leave[cand_i]
            alone = leave.copy()
        alone[size[lab] == 1] = -np.inf
        gain = np.concatenate([move, alone])
        mover = np.concatenate([cand_i, node])
        target = np.concatenate([cand_k, np.full(n, -1)])
        chosen = _pick_disjoint(gain, [lab[mover], target], k)
        if chosen.size == 0:
            return lab
        mover, target = mover[chosen], target[chosen]
        source = lab[mover]
        fresh = int((target < 0).sum())
        if fresh:
            target[target < 0] = k + np.arange(fresh)
            k += fresh
            st = (
                sp.vstack([st, sp.csr_matrix((fresh, n))], format="csr")
                if sp.issparse(st)
                else np.vstack([st, np.zeros((fresh, n))])
            )
            size = np.concatenate([size, np.zeros(fresh, dtype=size.dtype)])
            if lsum is not None:
                lsum = np.vstack([lsum, np.zeros((fresh, lsum.shape[1]))])
        if sp.issparse(st):
            m = mover.size
            rows = np.concatenate([target, source])
            change = sp.csr_matrix(
                (np.repeat([1.0, -1.0], m), (rows, np.tile(np.arange(m), 2))), shape=(k, m)
            )
            st = st + change @ w[mover]
        else:  # targets are distinct, and so are sources, within a round
            st[target] += w[mover]
            st[source] -= w[mover]
        size[target] += 1
        size[source] -= 1
        if lsum is not None:
            lsum[target] += lp[mover]
            lsum[source] -= lp[mover]
        lab[mover] = target
        touched = np.concatenate([target, source])
        keep = ~np.isin(pos_k, touched)
        row, pos_i_new, pos_s_new = _positive_entries(st[touched])
        pos_k = np.concatenate([pos_k[keep], touched[row]])
        pos_i = np.concatenate([pos_i[keep], pos_i_new])
        pos_s = np.concatenate([pos_s[keep], pos_s_new])
        if lsum is not None:
            join_new = max_of_sums(lsum, touched[row], lp, pos_i_new)
            pos_join = np.concatenate([pos_join[keep], join_new])


def _merge_clusters(
    w: np.ndarray | sp.csr_matrix, lp: np.ndarray | None, labels: np.ndarray
) -> tuple[np.ndarray, bool]:
    """One round of gainful merges of disjoint cluster pairs, best first → (labels, merged)."""
    lab, k = compact(labels)
    member = _membership(lab, k)
    wc = member @ _node_cluster_sums(w, member)  # [K, K] summed weights between clusters
    a, b, x = _positive_entries(wc)
    upper = a < b
    a, b, x = a[upper], b[upper], x[upper]
    if lp is not None:
        x = x + class_gain_pairs(cluster_sums(lab, k, lp), a, b)
    chosen = _pick_disjoint(x, [a, b], k)
    target = np.arange(k)
    target[b[chosen]] = a[chosen]
    return target[lab], bool(chosen.size)


def _changed_nodes(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """bool [N]: True where the node's cluster differs (as a member set) between labelings."""
    lo, ko = compact(old)
    ln, kn = compact(new)
    _, inverse, count = np.unique(lo * kn + ln, return_inverse=True, return_counts=True)
    both = count[inverse.ravel()]
    return (both != np.bincount(lo, minlength=ko)[lo]) | (both != np.bincount(ln, minlength=kn)[ln])


def _kl_exchanges(
    w: np.ndarray | sp.csr_matrix,
    lp: np.ndarray | None,
    labels: np.ndarray,
    dirty: np.ndarray,
    max_nodes: int | None = None,
) -> tuple[np.ndarray, bool]:
    """One sweep of Kernighan–Lin bipartition updates → (labels, improved).

    Candidates are the pairs of clusters joined by a positive node-to-cluster weight, and every
    cluster of two or more against a new empty one (a split). Pairs without a dirty node (no
    member change since their last evaluation) would give the same answer and are skipped. All
    sequences are run from the same state (``_kl_sequences``); the gainful ones that touch
    disjoint clusters are applied, best first. Pairs of more than ``max_nodes`` members
    together are left out (None: none).
    """
    lab, k = compact(labels)
    member = _membership(lab, k)
    ci, ck, _ = _positive_entries(_node_cluster_sums(w, member))
    other = ck != lab[ci]
    a, b = lab[ci[other]], ck[other]
    pairs = np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1), axis=0)
    size = np.bincount(lab, minlength=k)
    splits = np.flatnonzero(size >= 2)
    pairs = np.concatenate(
        [pairs.reshape(-1, 2), np.stack([splits, np.full(splits.size, -1)], axis=1)]
    )
    has_dirty = np.bincount(lab, weights=dirty, minlength=k) > 0
    second = np.maximum(pairs[:, 1], 0)
    pairs = pairs[has_dirty[pairs[:, 0]] | ((pairs[:, 1] >= 0) & has_dirty[second])]
    if pairs.shape[0] == 0:
        return lab, False
    # members of both clusters of every pair, padded: slot [P, M] -> node, side True in second
    count = size[pairs[:, 0]] + np.where(pairs[:, 1] >= 0, size[np.maximum(pairs[:, 1], 0)], 0)
    if max_nodes is not None:
        pairs, count = pairs[count <= max_nodes], count[count <= max_nodes]
        if pairs.shape[0] == 0:
            return lab, False
    by_size = np.argsort(count, kind="stable")
    pairs, count = pairs[by_size], count[by_size]
    order = np.argsort(lab, kind="stable")
    start = np.concatenate([[0], np.cumsum(size)])
    gain = np.zeros(pairs.shape[0])
    flips: list[tuple[np.ndarray, np.ndarray]] = []
    lo = 0
    while lo < pairs.shape[0]:
        hi = lo + 1
        while hi < pairs.shape[0] and (hi + 1 - lo) * _block_floats(int(count[hi]), lp) <= CHUNK:
            hi += 1
        m = int(count[hi - 1])
        chunk = pairs[lo:hi]
        slot = np.arange(m)
        first, second = chunk[:, 0], chunk[:, 1]
        n_first = size[first][:, None]
        n_second = np.where(second >= 0, size[np.maximum(second, 0)], 0)[:, None]
        real = slot < n_first + n_second  # [P, M]
        side = slot >= n_first
        pos = np.where(
            side,
            start[np.maximum(second, 0)][:, None] + slot - n_first,
            start[first][:, None] + slot,
        )
        nodes = np.where(real, order[np.minimum(pos, lab.size - 1)], 0)  # [P, M]
        block = _gather_blocks(w, nodes, real)  # [P, M, M]
        lpp = None if lp is None else np.where(real[:, :, None], lp[nodes], 0.0)
        g, flip = _kl_sequences(block, lpp, side & real, real)
        gain[lo:hi] = g
        flips += [(nodes[r][flip[r]], chunk[r]) for r in range(hi - lo)]
        lo = hi
    chosen = _pick_disjoint(gain, [pairs[:, 0], pairs[:, 1]], k)
    lab = lab.copy()
    next_label = k
    for r in chosen.tolist():
        moved, (p, q) = flips[r]
        if q < 0:
            q = next_label
            next_label += 1
        lab[moved] = np.where(lab[moved] == p, q, p)
    return lab, bool(chosen.size)


def _block_floats(m: int, lp: np.ndarray | None) -> int:
    """Floats per problem in ``_kl_sequences`` for M = m nodes: [M, M] weights, [M, C] lp."""
    return m * max(m, 1 if lp is None else lp.shape[1])


def _gather_blocks(
    w: np.ndarray | sp.csr_matrix, nodes: np.ndarray, real: np.ndarray
) -> np.ndarray:
    """Weights among the nodes of each row: nodes, real [P, M] → float [P, M, M], 0 at padding."""
    p, m = nodes.shape
    if not sp.issparse(w):
        block = w[nodes[:, :, None], nodes[:, None, :]]
        return block * (real[:, :, None] & real[:, None, :])
    # Sparse: expand each (row, slot)'s neighbours and find them among the row's own nodes.
    key = np.where(real, np.arange(p)[:, None] * w.shape[0] + nodes, -1).ravel()  # [P*M]
    sorter = np.argsort(key, kind="stable")
    flat = np.flatnonzero(real.ravel())
    deg = np.diff(w.indptr)[nodes.ravel()[flat]]
    src = np.repeat(flat, deg)
    offsets = np.repeat(w.indptr[nodes.ravel()[flat]] - np.cumsum(deg) + deg, deg)
    entry = offsets + np.arange(deg.sum())
    want = (src // m) * w.shape[0] + w.indices[entry]
    at = np.minimum(np.searchsorted(key, want, sorter=sorter), key.size - 1)
    hit = key[sorter[at]] == want
    block = np.zeros(p * m * m)
    block[src[hit] * m + sorter[at[hit]] % m] = w.data[entry[hit]]
    return block.reshape(p, m, m)


def _kl_sequences(
    w: np.ndarray, lp: np.ndarray | None, side: np.ndarray, real: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Kernighan–Lin move sequences between two clusters, P problems side by side.

    w [P, M, M] weights among the members of both clusters (0 at padding), lp [P, M, C] their
    log-probs or None, side bool [P, M] (True: second cluster), real bool [P, M] (False:
    padding). Moves every node once to the other side, always the one of highest pair gain
    (negative gains allowed), and keeps the prefix of highest gain in the full objective (the
    class term is evaluated for every prefix at the end, which is O(M) rather than O(M²) work
    per problem). Returns that gain [P] (0 if no prefix gains) and the nodes the prefix moves,
    bool [P, M].
    """
    p, m = side.shape
    row = np.arange(p)
    sign = np.where(side, 1.0, -1.0)  # [P, M]
    d = -sign * np.einsum("pij,pj->pi", w, sign)  # [P, M] pair gain of a move to the other side
    done = ~real
    moved = np.full((p, m), -1)  # [P, steps] node moved at each step, -1: none
    gains = np.zeros((p, m))  # [P, steps] pair gain of each step
    for step in range(m):
        g = np.where(done, -np.inf, d)
        i = g.argmax(axis=1)  # [P]
        live = ~done[row, i]
        if not live.any():
            break
        r, i = row[live], i[live]
        moved[r, step] = i
        gains[r, step] = g[r, i]
        done[r, i] = True
        sign[r, i] = -sign[r, i]
        d[r] -= 2.0 * sign[r] * w[r, i] * sign[r, i][:, None]
        d[r, i] = -d[r, i]
    total = np.concatenate([np.zeros((p, 1)), np.cumsum(gains, axis=1)], axis=1)  # [P, M + 1]
    if lp is not None:
        first = (lp * (real & ~side)[:, :, None]).sum(axis=1)  # [P, C] summed log-probs
        second = (lp * side[:, :, None]).sum(axis=1)
        step_lp = np.where((moved >= 0)[:, :, None], lp[row[:, None], np.maximum(moved, 0)], 0.0)
        from_first = ~side[row[:, None], np.maximum(moved, 0)]  # [P, steps]
        shift = np.cumsum(np.where(from_first[:, :, None], step_lp, -step_lp), axis=1)
        after = (first[:, None] - shift).max(-1) + (second[:, None] + shift).max(-1)  # [P, M]
        before = first.max(-1) + second.max(-1)  # [P]
        total[:, 1:] += after - before[:, None]
    best_len = total.argmax(axis=1)  # [P], 0 when no prefix gains
    best = total[row, best_len]
    best_len[best <= GAIN_TOL] = 0
    in_prefix = np.arange(m) < best_len[:, None]  # [P, steps]
    flip = np.zeros((p, m), dtype=bool)
    rr, ss = np.nonzero(in_prefix & (moved >= 0))
    flip[rr, moved[rr, ss]] = True
    return np.where(best_len > 0, best, 0.0), flip
