"""cohortctl: stratify patient cohorts into groups likely to respond alike.

The command line (``cohortctl``) is a thin layer over this importable library,
whose modules follow the pipeline: read -> ingest (store) -> features ->
cluster -> characterise -> report.
"""

import os as _os

__version__ = "0.1.0"

# numba compiles UMAP's kernels for the CPU it runs on, and the instruction set changes the
# floating-point results: the same seed gave other groups on another CPU (TCGA breast ARI
# 0.97, SRBCT 0.77, NCI-60 0.0 between host and generic code). Compiled for a generic
# x86-64 the partitions no longer depend on the CPU (nor on OpenBLAS's kernel: identical
# on breast, SRBCT and NCI-60 with OPENBLAS_CORETYPE=Sandybridge). Set before numba is
# imported; a value the user set is kept (docs/methods.md, "Reproducibility").
_os.environ.setdefault("NUMBA_CPU_NAME", "generic")
