"""Small-cell suppression engines, checked against an independent linear program.

A withheld count is safe when the published values (shown cells and totals) do not pin it
down: minimising and maximising it with ``scipy.optimize.linprog`` subject to the published
equalities and non-negativity must give different values.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linprog

from cohortctl.characterise.privacy import (
    ClusterLayout,
    format_count,
    small_clusters,
    suppress_linear,
    suppress_nested,
    suppress_table,
    suppress_with_margins,
)


def _range(n: int, equalities: list[tuple[list[int], float]], target: np.ndarray) -> float:
    """max - min of ``target @ x`` over x >= 0 satisfying the equalities."""
    a = np.zeros((len(equalities), n))
    b = np.zeros(len(equalities))
    for r, (idx, val) in enumerate(equalities):
        a[r, idx] = 1.0
        b[r] = val
    kw = {"A_eq": a, "b_eq": b} if equalities else {}
    lo = linprog(target, bounds=[(0, None)] * n, method="highs", **kw)
    hi = linprog(-target, bounds=[(0, None)] * n, method="highs", **kw)
    assert lo.status == 0
    return np.inf if hi.status != 0 else -hi.fun - lo.fun


def _table_equalities(t: np.ndarray, sup) -> list[tuple[list[int], float]]:
    r, c = t.shape
    eq = [([i], float(t.flat[i])) for i in range(r * c) if not sup.cells.flat[i]]
    eq += [
        (list(range(i * c, (i + 1) * c)), float(t[i].sum()))
        for i in range(r)
        if not sup.row_totals[i]
    ]
    eq += [
        (list(range(j, r * c, c)), float(t[:, j].sum())) for j in range(c) if not sup.col_totals[j]
    ]
    if not sup.grand_total:
        eq.append((list(range(r * c)), float(t.sum())))
    return eq


def test_textbook_example_secondary_suppression() -> None:
    t = np.array([[20, 3, 15], [10, 12, 9]])
    sup = suppress_with_margins(t, 5)
    assert sup.cells[0, 1]  # primary
    # A single withheld cell in a row or column would be total - sum(others): not the case.
    assert sup.cells[0].sum() >= 2 and sup.cells[:, 1].sum() >= 2
    # Recovering 3 as row total minus the other visible cells fails: another cell is hidden.
    visible = [t[0, j] for j in range(3) if not sup.cells[0, j]]
    assert t[0].sum() - sum(visible) != 3 or sup.row_totals[0]
    eq = _table_equalities(t, sup)
    target = np.zeros(6)
    target[1] = 1
    assert _range(6, eq, target) > 0.5
    assert suppress_table(t, 5).tolist() == sup.cells.tolist()


def test_small_totals_withheld_and_zeros_shown() -> None:
    t = np.array([[0, 2], [0, 1]])
    sup = suppress_with_margins(t, 5)
    assert not sup.cells[0, 0] and not sup.cells[1, 0]  # zeros are shown
    assert sup.col_totals[1] and sup.grand_total  # total 3 is small


@pytest.mark.parametrize("seed", [0, 1])
def test_random_tables_no_withheld_entry_is_determined(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(40):
        r, c = rng.integers(1, 5, 2)
        t = rng.choice([0, 0, 1, 2, 3, 4, 6, 9, 15, 30], (r, c))
        rows, cols = rng.choice(["shown", "hidden", "public"], 2)
        sup = suppress_with_margins(t, 5, row_totals=str(rows), col_totals=str(cols))
        assert sup.cells[(t > 0) & (t < 5)].all(), "primary suppression"
        eq = _table_equalities(t, sup)
        n = t.size
        # What the public totals alone pin down cannot be protected (skipped).
        public_eq = []
        if rows == "public":
            public_eq += [(list(range(k * c, (k + 1) * c)), float(t[k].sum())) for k in range(r)]
        if cols == "public":
            public_eq += [(list(range(k, n, c)), float(t[:, k].sum())) for k in range(c)]
        for i in np.flatnonzero(sup.cells.ravel() & (t.ravel() > 0)):
            target = np.zeros(n)
            target[i] = 1
            if public_eq and _range(n, public_eq, target) < 0.5:
                continue
            assert _range(n, eq, target) > 0.5, (t.tolist(), rows, cols, sup)


def test_linear_engine_nested_tables_against_lp() -> None:
    """Groups within clusters: n (shown) = positives (shown) + others (hidden); cluster size
    (public) = sum of groups + excluded (hidden); total excluded shown."""
    rng = np.random.default_rng(3)
    for _ in range(40):
        n_k, n_g = rng.integers(1, 4), rng.integers(1, 4)
        vals: list[int] = []
        status: list[str] = []
        aggs: list[list[int]] = []
        astat: list[str] = []
        excl: list[int] = []
        for _k in range(n_k):
            members: list[int] = []
            for _g in range(n_g):
                base = len(vals)
                vals += [int(x) for x in rng.integers(0, 14, 2)]
                status += ["shown", "hidden"]
                aggs.append([base, base + 1])
                astat.append("shown")
                members += [base, base + 1]
            vals.append(int(rng.choice([0, 0, 1, 3, 8])))
            status.append("hidden")
            excl.append(len(vals) - 1)
            aggs.append([*members, len(vals) - 1])
            astat.append("public")
        aggs.append(excl)
        astat.append("shown")
        sup = suppress_linear(vals, aggs, 5, cell_status=status, aggregate_status=astat)
        v = np.array(vals)
        n = v.size
        published = [([i], float(v[i])) for i in range(n) if not sup.cells[i]]
        published += [
            (a, float(v[a].sum())) for a, s in zip(aggs, sup.aggregates, strict=True) if not s
        ]
        public = [(a, float(v[a].sum())) for a, s in zip(aggs, astat, strict=True) if s == "public"]
        for i in range(n):
            small = 0 < v[i] < 5
            if status[i] == "shown" and small:
                assert sup.cells[i]
            protect = (sup.cells[i] and status[i] == "shown" and v[i] > 0) or small
            if not protect:
                continue
            target = np.zeros(n)
            target[i] = 1
            if _range(n, public, target) < 0.5:
                continue  # fixed by the public sizes alone (a cluster below min_cell)
            assert _range(n, published, target) > 0.5, (vals, aggs, sup)
        for j, a in enumerate(aggs):
            if sup.aggregates[j] and astat[j] == "shown" and v[a].sum() > 0:
                target = np.zeros(n)
                target[a] = 1
                if _range(n, public, target) >= 0.5:
                    assert _range(n, published, target) > 0.5


def test_nested_small_exclusion_withholds_n() -> None:
    # Cluster sizes 50 and 40 are public; 2 patients of cluster 0 lack data.
    sup = suppress_nested([50, 40], [{"all": (48, 20)}, {"all": (40, 15)}], [[2], [0]], 5)
    assert sup.n[0]["all"], "n = 48 would reveal 50 - 48 = 2 excluded"
    assert sup.excluded_totals[0], "the total excluded (2) is small"
    assert not sup.n[1]["all"]
    lax = suppress_nested(
        [50, 40], [{"all": (48, 20)}, {"all": (40, 15)}], [[2], [0]], 5, protect_excluded=False
    )
    assert not lax.n[0]["all"] and not lax.excluded_totals[0]


def test_cluster_layout_and_format() -> None:
    layout = ClusterLayout.from_labels([0] * 10 + [1] * 3 + [2] * 7 + [-1] * 6, 5)
    # Group sizes are structural: the small cluster is folded, nothing else is withheld
    # to protect it (that hid whole clusters of >= min_cell patients).
    assert layout.shown == [0, 2, -1]
    assert layout.tested == [0, 2]
    assert layout.suppressed == [1] and layout.folded == 3
    alone = ClusterLayout.from_labels([0] * 10 + [1] * 3 + [2] * 7 + [3] * 8, 5)
    assert alone.suppressed == [1] and alone.shown == [0, 2, 3]
    two = ClusterLayout.from_labels([0] * 10 + [1] * 3 + [-1] * 2 + [2] * 7, 5)
    assert two.suppressed == [-1, 1] and two.shown == [0, 2] and two.folded == 5
    assert two.to_dict()["not_clustered_or_withheld"] == 5
    d = layout.to_dict()
    small = [c for c in d["clusters"] if c["cluster"] == 1][0]
    assert small["n"] is None and small["n_suppressed"]
    assert small_clusters({0: 10, 1: 3, 2: 0}, 5) == {1}
    assert format_count(3, True, 5) == "*"
    assert format_count(3, True, 5, standalone=True) == "<5"
    assert format_count(12, False, 5) == "12"
    with pytest.raises(ValueError):
        suppress_with_margins(np.array([[1, -1]]), 5)
    with pytest.raises(ValueError):
        ClusterLayout.from_labels([0, 1], 0)
