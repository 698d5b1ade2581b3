"""Paper tables: suites of rows (experiments/<suite>/suite.yaml), `embedseg reproduce` to run them and
`embedseg table` to render them."""
from __future__ import annotations

from embedseg.suites.spec import Suite, load_suite, suite_names

__all__ = ["Suite", "load_suite", "suite_names"]
