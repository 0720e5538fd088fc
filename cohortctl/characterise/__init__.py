"""Statistics layer of the report: what distinguishes each cluster and how each fared.

Every function takes polars tables and ``min_cell`` (default 5) and returns a small dataclass
with display-ready polars tables and JSON-serialisable raw numbers (``to_dict()``); small-cell
suppression (:mod:`cohortctl.characterise.privacy`) is already applied to both. Patient
identifiers never appear in any output.
"""

from cohortctl.characterise.markers import MarkerResult, markers
from cohortctl.characterise.multiple_testing import bh_qvalues, format_p
from cohortctl.characterise.mutations import MutationResult, OncoPrint, mutation_enrichment
from cohortctl.characterise.privacy import (
    CharacteriseInputError,
    ClusterLayout,
    Suppression,
    format_count,
    small_clusters,
    suppress_table,
    suppress_with_margins,
)
from cohortctl.characterise.response import (
    OutcomeTable,
    ResponseResult,
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
    "CharacteriseInputError",
    "ClusterLayout",
    "KMCurve",
    "MarkerResult",
    "MutationResult",
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
    "km_curve",
    "markers",
    "mutation_enrichment",
    "outcome_table_by_cluster",
    "parse_response",
    "response_by_cluster",
    "small_clusters",
    "suppress_table",
    "suppress_with_margins",
    "survival_by_cluster",
    "survival_by_treatment_within_cluster",
    "table_one",
]
