"""Report stage: gather characterisation results for a run and render HTML/Markdown/JSON."""

from cohortctl.report.build import FORMATS, Report, gather, write_report

__all__ = ["FORMATS", "Report", "gather", "write_report"]
