"""Partition decoders: pair logits ``[N, N]`` (+ class logits ``[N, C]``) → category, group per box.

Objective
---------
All decoders address one problem, correlation clustering (multicut) with an optional
category term. For a partition of the boxes into clusters ``S``::

    objective = Σ_{i<j in one cluster} pair_logits[i, j]
              + Σ_S max_c Σ_{i∈S} log_softmax(class_logits)[i, c]      (if class logits given)

Pair logits are log-odds of "same group", so a positive logit rewards joining the pair and a
negative one rewards cutting it. The second term gives every cluster the category its members
jointly find most probable; it is 0 without class logits (then every category is 0).

Methods
-------
``gaec-kl``
    Greedy additive edge contraction (always contract the pair of clusters whose merge gains
    most, stop when no merge gains), then local search until no move gains: rounds of
    single-node moves (into an adjacent cluster or out into a new singleton), merges of two
    clusters, and Kernighan–Lin exchanges (for two clusters, or one cluster and a new empty
    one, move every member once to the other side, best first even at a loss, and keep the
    best prefix of the sequence). Each round applies the gainful moves that touch disjoint
    clusters, whose gains add up exactly. The local search also runs from the average-linkage
    partition and, up to 500 boxes, from all singletons; the best result is kept (the starts
    end in different local optima; see BENCHMARKS.md). With ``consistency="joint"`` every
    stage optimises the full objective above, class term included, so a merge across
    categories pays for the members that change category.
``average``
    Average-linkage agglomeration of the pair probabilities ``sigmoid(pair_logits)``, cut where
    the mean probability between two clusters falls to 0.5 (scipy; the fast path for large N).
    Ignores class logits while grouping.
``components``
    Connected components of the pairs with probability > 0.5 (baseline). Ignores class logits
    while grouping.
``exact``
    The integer program (``scipy.optimize.milp``: one binary per pair, triangle inequalities
    added as the solutions violate them, and with joint consistency one binary per (box,
    category)) — the optimality reference for tests and benchmarks. Refuses more than
    ``EXACT_MAX_NODES`` (30) boxes.

Category consistency
--------------------
Every group holds one category by construction. ``consistency="joint"`` (default): a group's
category is the argmax of its members' summed log-probabilities and every member takes it.
``consistency="forbid"``: each box keeps its own argmax category and boxes of different argmax
categories are never linked (the problem is solved per category).

Group scores
------------
``Partition.group_scores[k]`` is the mean of ``sigmoid(pair_logits)`` over the pairs inside group
``k`` (for sparse input: over the listed pairs inside it). A singleton has no pair; its score is
its maximum class probability when class logits are given, else 1.0.

Sparse input
------------
``decode_sparse`` / ``partition_sparse`` take an edge list (k-nearest neighbours or thresholded
pairs) so memory stays O(N·k). An unlisted pair is neutral (logit 0, probability 0.5): it adds
nothing to the objective and counts as 0.5 in average linkage. Self loops are ignored and an
unordered pair listed more than once takes the mean of its logits. Clusters are split into the
connected pieces of their listed inner edges at the end (this never lowers the objective), so
every group of two or more boxes has listed inner pairs to score it by.
The problem falls apart exactly into the connected components of the pairs of positive logit
(splitting a cluster where no positive pair joins its parts never lowers the objective), which
are solved in batches of whole components; and Kernighan–Lin exchanges on an edge list skip
cluster pairs of more than ``KL_MAX_NODES`` (1000) members together, whose sequences cost
O(M²) (node moves and merges still reach them), so that a graph collapsing into a few huge
clusters stays fast.
``neighbor_edges(boxes, k)`` gives such a list: every box with its k nearest boxes by the gap
between their edges. Decoding on it keeps only local evidence, which suits pair heads that are
reliable for neighbouring boxes but not for far-apart members of one long group (a paragraph:
its far words need not look alike; transitivity through neighbours joins them).

Determinism and numbering
-------------------------
The same input gives the same output (ties go to the lowest index). Groups are numbered 0, 1, …
within each category, ordered by their lowest member index, or with ``boxes`` by the leftmost
``x1`` among their members, then the topmost ``y1``, then the lowest member index.
``Partition.cluster`` numbers all groups globally, ordered by (category, group id).

Implementation choice
---------------------
GAEC and local search are this package's own vectorised numpy/scipy: a dense cluster-by-cluster
gain matrix with per-row maxima (each contraction is O(N) numpy work; a heap over an edge list
for sparse input), cluster-to-node weight sums ``onehot.T @ W`` updated by the moved rows only,
and Kernighan–Lin sequences run for many cluster pairs side by side. It was measured against
python-elf (GAEC + Kernighan–Lin of the compiled bioimage-cpp multicut solvers on the complete
graph; BENCHMARKS.md, "Partition decoder"): as close to the exact optimum or closer, faster on
large graphs, and it expresses the joint category term, which elf's multicut objective cannot;
so it is kept, with no dependency added.

Modules
-------
``api`` (the entry points above), ``checks`` (input validation), ``result`` (``Partition`` and
its assembly), ``clusters`` (per-cluster bookkeeping), ``dense``, ``exact``, ``local_search``,
``sparse`` (the solvers); ``neighbor_edges`` lives in ``detgroup.ops.neighbors``.
"""

from detgroup.decoder.api import decode, decode_on_neighbors, objective, partition
from detgroup.decoder.dense import METHODS
from detgroup.decoder.exact import EXACT_MAX_NODES
from detgroup.decoder.result import Partition
from detgroup.decoder.sparse import SPARSE_METHODS, decode_sparse, partition_sparse
from detgroup.ops.neighbors import neighbor_edges

__all__ = [
    "EXACT_MAX_NODES",
    "METHODS",
    "SPARSE_METHODS",
    "Partition",
    "decode",
    "decode_on_neighbors",
    "decode_sparse",
    "neighbor_edges",
    "objective",
    "partition",
    "partition_sparse",
]
