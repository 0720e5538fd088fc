"""The one rule by which patients are placed into existing groups by their neighbours.

``cluster`` uses it to place patients that were not clustered directly (non-landmarks,
unsure patients) and ``assign`` uses it to place new patients into a stored run, so
that a patient gets the same group whichever of the two places it. The rule is a
:class:`PlacementRule` (recorded in the run's ``params.json`` under
``resolved.placement_rule`` via :meth:`PlacementRule.to_dict`):

* the ``k`` nearest references (exact, brute-force Euclidean neighbours; ``k`` capped at
  the number of references) vote, each weighted ``1 / (d + floor)``;
* ``floor = floor_fraction * median nearest-neighbour distance of the reference set``
  (each reference's nearest *other* point: self and duplicates excluded). It is a
  property of the reference alone, computed once, so a query's result never depends on
  which other queries are placed with it (batching, chunking);
* unassigned references (label -1) vote too, as "-1": a query among noise stays
  unassigned;
* the label with the largest weight wins (ties: the lowest label, -1 included); its
  ``share`` is its fraction of the total weight and ``confidence = share x mean
  confidence of the winning voters``;
* :func:`place` additionally leaves a query unassigned (-1) when the winning share is
  below ``majority``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

#: Smallest weight floor (guards against a reference whose points all coincide).
MIN_FLOOR = 1e-12


@dataclass(frozen=True)
class PlacementRule:
    """How a patient is placed by a vote of its nearest reference patients."""

    k: int = 15  #: neighbours that vote (capped at the reference size)
    floor_fraction: float = 0.1  #: weight floor as a fraction of the reference's median NN distance
    majority: float = 0.5  #: a winning share below this leaves the patient unassigned (-1)

    def __post_init__(self) -> None:
        if int(self.k) < 1:
            raise ValueError(f"placement rule: k must be >= 1 (got {self.k})")
        if not (np.isfinite(self.floor_fraction) and self.floor_fraction >= 0):
            raise ValueError(f"placement rule: floor_fraction must be >= 0 "
                             f"(got {self.floor_fraction})")
        if not (0.0 <= self.majority <= 1.0):
            raise ValueError(f"placement rule: majority must be in [0, 1] (got {self.majority})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in ``params.json`` as ``resolved.placement_rule``)."""
        return {"k": int(self.k), "floor_fraction": float(self.floor_fraction),
                "majority": float(self.majority)}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> PlacementRule:
        """Inverse of :meth:`to_dict`; missing keys (older runs) take the defaults, unknown
        keys are ignored."""
        d = d or {}
        defaults = asdict(cls())
        known = {f.name for f in fields(cls)}
        vals = {**defaults, **{k: v for k, v in d.items() if k in known and v is not None}}
        return cls(k=int(vals["k"]), floor_fraction=float(vals["floor_fraction"]),
                   majority=float(vals["majority"]))

    def describe(self) -> str:
        """One line for reports and run parameters."""
        return (f"distance-weighted vote of the {self.k} nearest references (weight "
                f"1/(d + {self.floor_fraction:g} x the references' median nearest-neighbour "
                f"distance); unassigned references vote as -1; unassigned below a "
                f"{self.majority:.0%} share")


def reference_floor(ref: np.ndarray, rule: PlacementRule | None = None) -> float:
    """``rule.floor_fraction`` x the median, over the references, of the distance to the
    nearest *other* reference point (duplicates and self excluded: the nearest point at a
    positive distance); :data:`MIN_FLOOR` when undefined (fewer than two distinct points)."""
    from sklearn.neighbors import NearestNeighbors

    rule = rule or PlacementRule()
    ref = np.asarray(ref, dtype=np.float64)
    if ref.shape[0] < 2 or rule.floor_fraction == 0:
        return MIN_FLOOR
    points, inverse = np.unique(ref, axis=0, return_inverse=True)
    if points.shape[0] < 2:
        return MIN_FLOOR
    # kneighbors() without a query excludes each point itself.
    d = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(points).kneighbors()[0]
    nearest = d[:, 0][np.asarray(inverse).reshape(-1)]
    nearest = nearest[nearest > 0]
    if not nearest.size:
        return MIN_FLOOR
    return max(rule.floor_fraction * float(np.median(nearest)), MIN_FLOOR)


def knn_vote(ref: np.ndarray, ref_labels: np.ndarray, ref_conf: np.ndarray,
             query: np.ndarray, rule: PlacementRule | None = None, chunk: int = 20000, *,
             k: int | None = None, floor: float | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label of each query point by a distance-weighted vote of its nearest references.

    Returns ``(labels, confidence, share)`` (no majority rule applied: see :func:`place`).
    ``k`` overrides ``rule.k``; ``floor`` (from :func:`reference_floor`) may be passed to
    avoid recomputing it for repeated votes against the same reference.
    """
    from sklearn.neighbors import NearestNeighbors

    rule = rule or PlacementRule()
    ref = np.asarray(ref, dtype=np.float64)
    query = np.asarray(query, dtype=np.float64)
    ref_labels = np.asarray(ref_labels).astype(np.int64)
    ref_conf = np.asarray(ref_conf, dtype=np.float64)
    n_q = query.shape[0]
    if ref.shape[0] == 0:
        raise ValueError("knn_vote: empty reference")
    if not (ref.shape[0] == ref_labels.shape[0] == ref_conf.shape[0]):
        raise ValueError("knn_vote: ref, ref_labels and ref_conf differ in length")
    out_l = np.empty(n_q, dtype=np.int64)
    out_c = np.empty(n_q, dtype=np.float64)
    out_s = np.empty(n_q, dtype=np.float64)
    if n_q == 0:
        return out_l, out_c, out_s
    kk = max(1, min(int(k if k is not None else rule.k), ref.shape[0]))
    fl = reference_floor(ref, rule) if floor is None else max(float(floor), MIN_FLOOR)
    nn = NearestNeighbors(n_neighbors=kk, algorithm="brute").fit(ref)
    classes = np.unique(ref_labels)  # sorted: argmax ties go to the lowest label
    chunk = max(1, int(chunk))
    for s0 in range(0, n_q, chunk):
        d, idx = nn.kneighbors(query[s0:s0 + chunk])
        w = 1.0 / (d + fl)
        lab = ref_labels[idx]
        votes = np.stack([(w * (lab == c)).sum(axis=1) for c in classes], axis=1)
        best = np.argmax(votes, axis=1)
        share = votes[np.arange(best.size), best] / w.sum(axis=1)
        winners = lab == classes[best][:, None]
        mean_conf = (ref_conf[idx] * winners).sum(axis=1) / np.maximum(winners.sum(axis=1), 1)
        out_l[s0:s0 + chunk] = classes[best]
        out_c[s0:s0 + chunk] = share * mean_conf
        out_s[s0:s0 + chunk] = share
    return out_l, out_c, out_s


def place(ref: np.ndarray, ref_labels: np.ndarray, ref_conf: np.ndarray, query: np.ndarray,
          rule: PlacementRule | None = None, chunk: int = 20000, *, floor: float | None = None
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`knn_vote` plus the majority rule: a query whose winning share is below
    ``rule.majority`` is unassigned (-1); its confidence is left as the vote gave it."""
    rule = rule or PlacementRule()
    labels, conf, share = knn_vote(ref, ref_labels, ref_conf, query, rule, chunk, floor=floor)
    labels[share < rule.majority] = -1
    return labels, conf, share
