"""Markdown tables of metric dicts (fractions in code, printed as percent)."""
from __future__ import annotations

import math

DEFAULT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * float(value):.1f}"


def format_table(rows: dict[str, dict], keys=DEFAULT_KEYS, first: str = "") -> str:
    """One Markdown row per entry of `rows` ({row name: metrics}); missing or NaN values are '-'.

    >>> print(format_table({"meanshift": {"AP": 0.5, "AP50": float("nan")}}, keys=("AP", "AP50")))
    |  | AP | AP50 |
    |---|---:|---:|
    | meanshift | 50.0 | - |
    """
    lines = ["| " + " | ".join([first, *keys]) + " |", "|---|" + "---:|" * len(keys)]
    for name, metrics in rows.items():
        lines.append("| " + " | ".join([str(name), *(_cell(metrics.get(k)) for k in keys)]) + " |")
    return "\n".join(lines)
