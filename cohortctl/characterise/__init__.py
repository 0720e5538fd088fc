"""Statistics layer of the report: what distinguishes each cluster and how each fared.

Every function takes polars tables and ``min_cell`` (default 5) and returns a small dataclass
with display-ready polars tables and JSON-serialisable raw numbers (``to_dict()``); small-cell
suppression (:mod:`cohortctl.characterise.privacy`) is already applied to both. Patient
identifiers never appear in any output. Cluster sizes are treated as public (shown elsewhere in
the report); the total cohort size must not be shown alongside if a cluster is suppressed, as
it would reveal that cluster's size.
"""

from cohortctl.characterise.markers import MarkerResult, markers
from cohortctl.characterise.multiple_testing import bh_qvalues, format_p
from cohortctl.characterise.mutations import MutationResult, OncoPrint, mutation_enrichment
from cohortctl.characterise.privacy import (
    SUPPRESSED_CLUSTER,
    WITHHELD_MARK,
    CharacteriseInputError,
    ClusterLayout,
    LinearSuppression,
    NestedSuppression,
    Suppression,
    format_count,
    small_clusters,
    suppress_linear,
    suppress_nested,
    suppress_table,
    suppress_with_margins,
)
from cohortctl.characterise.response import (
    OutcomeTable,
    ResponseResult,
    interaction_lr_test,
    outcome_table_by_cluster,
    parse_response,
    response_by_cluster,
)
from cohortctl.characterise.survival import (
    KMCurve,
    SurvivalByCluster,
    SurvivalByTreatment,
    km_curve,
    survival_by_cluster,
    survival_by_treatment_within_cluster,
)
from cohortctl.characterise.table1 import TableOne, table_one

__all__ = [
    "SUPPRESSED_CLUSTER",
    "WITHHELD_MARK",
    "CharacteriseInputError",
    "ClusterLayout",
    "KMCurve",
    "LinearSuppression",
    "MarkerResult",
    "MutationResult",
    "NestedSuppression",
    "OncoPrint",
    "OutcomeTable",
    "ResponseResult",
    "Suppression",
    "SurvivalByCluster",
    "SurvivalByTreatment",
    "TableOne",
    "bh_qvalues",
    "format_count",
    "format_p",
    "interaction_lr_test",
    "km_curve",
    "markers",
    "mutation_enrichment",
    "outcome_table_by_cluster",
    "parse_response",
    "response_by_cluster",
    "small_clusters",
    "suppress_linear",
    "suppress_nested",
    "suppress_table",
    "suppress_with_margins",
    "survival_by_cluster",
    "survival_by_treatment_within_cluster",
    "table_one",
]
