"""cohortctl: stratify patient cohorts into groups likely to respond alike.

The command line (``cohortctl``) is a thin layer over this importable library,
whose modules follow the pipeline: read -> ingest (store) -> features ->
cluster -> characterise -> report.
"""

__version__ = "0.1.0"
