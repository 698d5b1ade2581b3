"""Markdown tables of metric dicts (fractions in code, printed as percent; counts printed as is)."""
from __future__ import annotations

import math

from embedseg.evaluation.matching import COUNT_KEYS

DEFAULT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# Keys evaluate_matching writes, recognised by name so that any thresholds show up.
_MATCHING_PREFIXES = ("match_AP", "mAPr")
_MATCHING_NAMES = ("SBD", *COUNT_KEYS)


def _cell(key: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if key in COUNT_KEYS:
        return f"{float(value):.2f}"
    return f"{100 * float(value):.1f}"


def format_table(rows: dict[str, dict], keys=DEFAULT_KEYS, first: str = "") -> str:
    """One Markdown row per entry of `rows` ({row name: metrics}); missing or NaN values are '-'.

    Fractions are printed as percent with one decimal; counts (DiC, abs_DiC) with two decimals.

    >>> print(format_table({"meanshift": {"AP": 0.5, "AP50": float("nan")}}, keys=("AP", "AP50")))
    |  | AP | AP50 |
    |---|---:|---:|
    | meanshift | 50.0 | - |
    """
    lines = ["| " + " | ".join([first, *keys]) + " |", "|---|" + "---:|" * len(keys)]
    for name, metrics in rows.items():
        lines.append("| " + " | ".join([str(name), *(_cell(k, metrics.get(k)) for k in keys)]) + " |")
    return "\n".join(lines)


def metric_columns(rows: dict[str, dict], keys=DEFAULT_KEYS) -> list[str]:
    """Columns worth printing: the `keys` some row has, then every matching metric present.

    Matching metrics (match_AP*, SBD, DiC, abs_DiC, mAPr*) keep the order in which the first
    row holding them lists them.
    """
    present = {k for metrics in rows.values() for k in metrics}
    columns = [k for k in keys if k in present]
    for metrics in rows.values():
        for k in metrics:
            if k not in columns and (k.startswith(_MATCHING_PREFIXES) or k in _MATCHING_NAMES):
                columns.append(k)
    return columns
