"""Model selection across clustering families, calibrated against a no-structure null.

Every candidate partition (a family and its parameter: HDBSCAN's minimum cluster size,
Ward's number of groups K) is scored by the same criterion on the same bootstrap
subsamples: its *stability*, the mean adjusted Rand index between the candidate's
partition of the whole cohort and its re-clustering of each subsample. Stability alone
cannot tell groups from a chopped continuum (a Gaussian cloud split at its median is very
reproducible), so each candidate is also run on *null* cohorts: Gaussian data with the
same covariance as the integrated matrix (the reference distribution of the gap
statistic and of M3C's Monte Carlo consensus clustering), which has no groups by
construction. A candidate's score is its stability minus its null stability.

The rule (:func:`choose`), kept pure so that it can be validated across datasets:

1. A candidate is *eligible* when it has at least 2 and at most ``max_groups`` groups,
   its smallest group holds at least ``max(min_group_size, min_group_fraction * n)``
   patients, and it leaves at most half the cohort unassigned.
2. The null is a gate: an eligible candidate *passes* when its score is at least
   ``min_score``. None passes → "no stable structure": one group.
3. Among the passing candidates the most stable wins (``rank="stability"``; the null
   rests on 2 x 10 bootstraps against the cohort's 30, so ranking by the difference would
   rank by the null's noise: measured in docs/validation.md), ``rank="score"`` ranks by
   the score instead. Candidates within ``tolerance`` of the best are told apart by the
   other value (the score: a two-group split that is as reproducible as four real groups
   is usually as reproducible on the null too), then by fewer groups and the family.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

FAMILY_ORDER = ("ward", "kmeans", "hdbscan")  # tie-break: Ward is deterministic given the embedding


@dataclass(frozen=True)
class SelectionRule:
    """The documented selection rule (see the module docstring); recorded in params.json."""

    min_score: float = 0.25
    tolerance: float = 0.01
    rank: str = "stability"  # stability | score: what passing candidates are ranked by
    min_group_fraction: float = 0.03
    min_group_size: int = 5
    max_groups: int = 8

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def smallest_allowed(self, n: int) -> int:
        return max(self.min_group_size, int(np.ceil(self.min_group_fraction * n)))


@dataclass
class Candidate:
    """One candidate partition of the cohort and its scores."""

    family: str  # "hdbscan" (param = minimum cluster size), "ward" or "kmeans" (param = K)
    param: int
    labels: np.ndarray  # partition of the cohort on the reference embedding (-1 unassigned)
    stability: float
    null_stability: list[float] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, int]:
        return self.family, self.param

    @property
    def groups(self) -> int:
        return int(np.unique(self.labels[self.labels >= 0]).size)

    @property
    def smallest(self) -> int:
        ok = self.labels[self.labels >= 0]
        return int(np.bincount(ok).min()) if ok.size else 0

    @property
    def unassigned(self) -> int:
        return int((self.labels < 0).sum())

    @property
    def null_mean(self) -> float:
        return float(np.mean(self.null_stability)) if self.null_stability else 0.0

    @property
    def score(self) -> float:
        return self.stability - self.null_mean

    def row(self, rule: SelectionRule) -> dict[str, Any]:
        """The candidate as a row of ``metrics.json``'s selection table."""
        why_not = ineligible(self, rule)
        return {"family": self.family, "param": self.param,
                "min_cluster_size" if self.family == "hdbscan" else "k": self.param,
                "clusters": self.groups, "smallest": self.smallest,
                "unassigned": self.unassigned,
                "stability": round(self.stability, 6),
                "null_stability": round(self.null_mean, 6),
                "score": round(self.score, 6),
                "eligible": why_not is None, "why_not": why_not}


def ineligible(c: Candidate, rule: SelectionRule) -> str | None:
    """Why a candidate cannot be chosen, or None when it can."""
    n = c.labels.size
    if c.groups < 2:
        return "fewer than 2 groups"
    if c.groups > rule.max_groups:
        return f"more than {rule.max_groups} groups"
    if c.smallest < rule.smallest_allowed(n):
        return f"a group smaller than {rule.smallest_allowed(n)} patients"
    if c.unassigned > n / 2:
        return "more than half the cohort unassigned"
    return None


def ranking(c: Candidate, rule: SelectionRule) -> float:
    """The value passing candidates are ranked by."""
    return c.score if rule.rank == "score" else c.stability


def tie_break(c: Candidate, rule: SelectionRule) -> float:
    """Among candidates within ``tolerance`` of the best ranking value: the other one."""
    return c.stability if rule.rank == "score" else c.score


@dataclass
class Decision:
    """The chosen candidate (None: no stable structure) and how decisive the choice was."""

    chosen: Candidate | None
    runner_up: Candidate | None
    best_score: float
    reason: str
    rule: SelectionRule = field(default_factory=lambda: SelectionRule())

    @property
    def margin(self) -> float | None:
        """Ranking value of the chosen candidate minus that of the best passing candidate
        with another number of groups (None when there is no such candidate)."""
        if self.chosen is None or self.runner_up is None:
            return None
        return round(ranking(self.chosen, self.rule) - ranking(self.runner_up, self.rule), 6)

    def summary(self) -> dict[str, Any]:
        c, r = self.chosen, self.runner_up
        return {
            "structure": c is not None,
            "chosen": None if c is None else _brief(c),
            "runner_up": None if r is None else _brief(r),
            "ranked_by": self.rule.rank,
            "best_score": round(self.best_score, 6),
            "margin": self.margin,
            "decisive": self.decisive,
            "reason": self.reason,
        }

    @property
    def decisive(self) -> bool:
        """Whether the choice stands clear of the alternatives (margin >= 0.05 or none)."""
        m = self.margin
        return m is None or m >= DECISIVE_MARGIN


DECISIVE_MARGIN = 0.05


def _brief(c: Candidate) -> dict[str, Any]:
    return {"family": c.family, "param": c.param, "clusters": c.groups,
            "stability": round(c.stability, 6), "score": round(c.score, 6)}


def choose(candidates: list[Candidate], rule: SelectionRule) -> Decision:
    """Apply the selection rule (module docstring) to scored candidates."""
    eligible = [c for c in candidates if ineligible(c, rule) is None]
    if not eligible:
        return Decision(None, None, 0.0, "no candidate with 2 or more groups of usable size",
                        rule)
    top = max(eligible, key=lambda c: c.score)
    passing = [c for c in eligible if c.score >= rule.min_score]
    if not passing:
        return Decision(None, top, top.score,
                        f"no candidate beats the no-structure null by {rule.min_score} "
                        f"(best {top.score:.3f}: {top.family} {top.param})", rule)
    order = {f: i for i, f in enumerate(FAMILY_ORDER)}
    best = max(passing, key=lambda c: ranking(c, rule))
    near = [c for c in passing if ranking(c, rule) >= ranking(best, rule) - rule.tolerance]
    chosen = min(near, key=lambda c: (-tie_break(c, rule), c.groups, order.get(c.family, 99),
                                      c.param))
    others = [c for c in passing if c.groups != chosen.groups]
    runner = max(others, key=lambda c: ranking(c, rule)) if others else None
    reason = (f"highest {rule.rank} above the null" if chosen is best else
              f"highest {'score' if rule.rank == 'stability' else 'stability'} within "
              f"{rule.tolerance} of the highest {rule.rank} "
              f"({best.family} {best.param}: {ranking(best, rule):.3f})")
    return Decision(chosen, runner, top.score, reason, rule)


def gaussian_null(Z: np.ndarray, rows: int, rng: np.random.Generator) -> np.ndarray:
    """A cohort without groups: Gaussian with the mean and covariance of ``Z``.

    Drawn through the eigendecomposition of the covariance (clipped at 0), so it works
    for rank-deficient matrices and depends only on ``rng``.
    """
    mu = Z.mean(axis=0)
    cov = np.atleast_2d(np.cov(Z, rowvar=False))
    vals, vecs = np.linalg.eigh(cov)
    scale = np.sqrt(np.clip(vals, 0.0, None))
    draws = rng.standard_normal((rows, Z.shape[1]))
    return mu + (draws * scale) @ vecs.T
