"""`embedseg table`: a suite's table (markdown, CSV or LaTeX) and figure from its finished runs alone.

Reference rows (copied from the paper) come first, then ours: the mean +- std over the seeds that
finished (the std only with more than one), the number of seeds in its own column. An external row
(another program's label images, scored here: one seed per run of it) has the source "external". A row with
no finished seed reads "missing", never a number.

`table --all` renders from the results kept beside each suite.yaml (embedseg.suites.reproduce.keep_results,
after copying there those under --runs), not from the runs folder alone: EXPERIMENTS.md keeps the rows of
runs whose folders are gone, and the repository holds the record of every number it shows.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedseg.evaluation.matching import COUNT_KEYS
from embedseg.outputs import atomic_path
from embedseg.suites.reproduce import keep_results, kept_results, run_results
from embedseg.suites.spec import Suite

FORMATS = ("md", "csv", "tex")
MISSING = "missing"


@dataclass
class RowResult:
    name: str
    source: str  # "paper", "ours (<budget>)" or "external (<budget>)"
    means: list  # per column: float, or None when not reported / missing
    stds: list  # per column: float or None
    seeds: int | None  # finished seeds (None for a reference row)
    results: list  # the row_<row>.json of every finished seed


def finished_results(suite: Suite, budget: str, runs: Path, row, kept: bool = False) -> list[dict]:
    """The result of every finished seed of `row`, in seed order: the run's under `runs`, else (with `kept`)
    the copy kept beside the suite.yaml."""
    paths = {**(kept_results(suite, budget, row) if kept else {}), **run_results(suite, budget, runs, row)}
    return [json.loads(paths[seed].read_text()) for seed in sorted(paths)]


def collect(suite: Suite, budget: str, runs: Path, kept: bool = False) -> list[RowResult]:
    """The table's rows: references, then ours from the finished results under `runs` (and, with `kept`,
    those kept beside the suite.yaml)."""
    rows = [RowResult(f"{r.name} ({r.note})" if r.note else r.name, "paper", list(r.values), [None] * len(r.values),
                      None, []) for r in suite.references]
    for row in suite.rows:
        results = finished_results(suite, budget, runs, row, kept)
        means, stds = [], []
        for column in suite.columns:
            values = np.array([r["scores"].get(column, np.nan) for r in results], dtype=float)
            means.append(float(np.mean(values)) if len(values) else None)
            stds.append(float(np.std(values, ddof=1)) if len(values) > 1 else None)
        source = "external" if row.external else "ours"
        rows.append(RowResult(row.name, f"{source} ({budget})", means, stds, len(results), results))
    return rows


def cell(mean, std, column: str, percent: bool, missing: bool, tex: bool = False) -> str:
    """One table cell: a fraction in percent (1 decimal) or as is (3 decimals); counts (DiC) with 2."""
    if missing:
        return MISSING
    if mean is None or not np.isfinite(mean):
        return "-"
    if column in COUNT_KEYS:
        scale, digits = 1, 2
    elif column.endswith(("_ms_median", "_ms_p90")) or column == "instances_per_image":
        scale, digits = 1, 1
    else:
        scale, digits = (100, 1) if percent else (1, 3)
    text = f"{scale * mean:.{digits}f}"
    if std is not None:
        text += (r" $\pm$ " if tex else " ± ") + f"{scale * std:.{digits}f}"
    return text


def format_table(suite: Suite, rows: list[RowResult], fmt: str = "md") -> str:
    """The table in `fmt` (md, csv or tex): method, source, one column per metric, seeds."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    header = ["method", "source", *suite.columns, "seeds"]
    body = [[r.name, r.source, *(cell(m, s, c, suite.percent, r.seeds == 0, fmt == "tex")
                                 for c, m, s in zip(suite.columns, r.means, r.stds)),
             "" if r.seeds is None else str(r.seeds)] for r in rows]
    if fmt == "csv":
        return "\n".join(",".join(f'"{c}"' if "," in c else c for c in line) for line in [header, *body])
    if fmt == "tex":
        escape = lambda text: text.replace("_", r"\_").replace("%", r"\%")
        lines = [r"\begin{tabular}{ll" + "r" * (len(header) - 2) + "}", r"\hline",
                 " & ".join(map(escape, header)) + r" \\", r"\hline"]
        lines += [" & ".join(map(escape, line)) + r" \\" for line in body]
        return "\n".join([*lines, r"\hline", r"\end{tabular}"])
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    return "\n".join([*lines, *("| " + " | ".join(line) + " |" for line in body)])


def column_thresholds(columns: list[str]) -> dict[int, float]:
    """Column index -> the IoU threshold its key ends with (match_AP50 -> 0.50, mAPr75 -> 0.75); a
    column without one (mAPr, their mean) is left out."""
    found = {i: re.search(r"(\d+(?:\.\d+)?)$", column) for i, column in enumerate(columns)}
    return {i: float(match.group(1)) / 100 for i, match in found.items() if match}


def draw_figure(suite: Suite, rows: list[RowResult], path: Path, budget: str) -> Path | None:
    """The suite's figure: AP against the IoU threshold (`figure: iou`) or grouped bars (`bars`)."""
    if suite.figure == "none":
        return None
    from embedseg.viz import plt  # pyplot on the Agg backend embedseg.viz chooses

    shown = [r for r in rows if r.seeds != 0]
    if not shown:  # nothing to draw yet
        return None
    scale = 100 if suite.percent else 1
    fig, ax = plt.subplots(figsize=(9, 4.2) if suite.figure == "ap_vs_time" else (7, 4.2))
    if suite.figure == "ap_vs_time":
        # one colour per grouper (an external row has none: its own), one marker per data set (the first
        # word of the row's name)
        grouper = {r.name: r.results[0].get("grouper", r.name) for r in shown}
        data_set = {r.name: r.name.split()[0] for r in shown}
        groupers, data_sets = list(dict.fromkeys(grouper.values())), list(dict.fromkeys(data_set.values()))
        for r in shown:
            column = {c: (m, sd) for c, m, sd in zip(suite.columns, r.means, r.stds)}
            (ap, ap_std), (ms, ms_std) = column["AP"], column["group_ms_median"]
            ax.errorbar([ms], [scale * ap], xerr=[ms_std or 0], yerr=[scale * (ap_std or 0)], capsize=3,
                        color=f"C{groupers.index(grouper[r.name]) % 10}", label=r.name,
                        marker="osD^v<>"[data_sets.index(data_set[r.name]) % 7], markersize=7)
        ax.set_xscale("log")
        ax.set_xlabel("grouping ms per image (median)")
    elif suite.figure == "iou":
        thresholds = column_thresholds(suite.columns)
        x = list(thresholds.values())
        for r in shown:
            y = [scale * r.means[i] if r.means[i] is not None else np.nan for i in thresholds]
            err = [scale * r.stds[i] if r.stds[i] is not None else 0 for i in thresholds]
            style = {"linestyle": "--", "marker": ".", "alpha": 0.7} if r.source == "paper" else \
                {"marker": "s" if r.source.startswith("external") else "o", "lw": 2}
            ax.errorbar(x, y, yerr=err, label=f"{r.name} ({r.source})", capsize=3, **style)
        ax.set_xlabel("IoU threshold")
    else:
        width = 0.8 / max(1, len(shown))
        for i, r in enumerate(shown):
            y = [scale * m if m is not None else np.nan for m in r.means]
            err = [scale * s if s is not None else 0 for s in r.stds]
            ax.bar(np.arange(len(suite.columns)) + i * width, y, width, yerr=err, capsize=3,
                   label=f"{r.name} ({r.source})")
        ax.set_xticks(np.arange(len(suite.columns)) + 0.4 - width / 2, suite.columns)
    unit = "percent" if suite.percent else "score"
    ax.set_ylabel(f"COCO AP ({unit})" if suite.figure == "ap_vs_time" else unit)
    ax.set_title(f"{suite.name} ({budget} budget)", fontsize=10)
    ax.grid(alpha=0.3)
    if suite.figure == "ap_vs_time":  # beside the plot: the points spread over all of it
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    elif suite.figure == "bars":  # below the plot: bars fill it to the top
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    else:
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def suite_section(suite: Suite, budget: str, rows: list[RowResult], figure: Path | None, link_from: Path) -> str:
    """One suite's part of EXPERIMENTS.md: caption, provenance of our rows, the table, the figure."""
    ours = [res for r in rows for res in r.results]
    dates = sorted({res["date"] for res in ours})
    commits = sorted({res["commit"] for res in ours})
    machines = sorted({res["machine"] for res in ours})
    seeds = max((r.seeds or 0 for r in rows), default=0)
    lines = [f"## {suite.title}", ""]
    if suite.paper:
        lines.append(f"Paper: {suite.paper}.")
    lines += [(f"Ours: `embedseg reproduce {suite.name} --budget {budget} --seeds {max(seeds, 1)}` "
              f"(suite: experiments/{suite.name}/README.md)."),
              (f"Measured {', '.join(dates) or 'never'}; commit {', '.join(commits) or '-'}; "
              f"machine {'; '.join(machines) or '-'}."), "", format_table(suite, rows)]
    if figure is not None and figure.is_file():
        lines += ["", f"![{suite.name}]({figure.relative_to(link_from).as_posix()})"]
    return "\n".join(lines) + "\n"


def experiments_markdown(suites: list[Suite], budget: str, runs: Path, out: Path) -> str:
    """EXPERIMENTS.md: every suite's section from its kept results (after keeping those under `runs`), its
    figure drawn to experiments/<suite>/results_<budget>.png beside `out`."""
    for suite in suites:
        keep_results(suite, budget, runs)
    full = any(r.results for suite in suites for r in collect(suite, "full", runs, kept=True))
    sections = ["# Experiments", "",
                (f"Every table below is written by `embedseg table --all --budget {budget}` from the finished runs "
                f"of `embedseg reproduce`, as kept in experiments/<suite>/results/{budget}/ (a copy of each run's "
                "row_<row>.json, so a row outlives its run folder; nothing here is typed by hand). Reference rows "
                "are the papers' numbers on their splits and hardware; ours are means ± std over the seeds that "
                "finished, on our splits, with grouping parameters chosen on the tune split (carved from train) and "
                "scores on val; external rows are another program's predictions made on the same machine and scored "
                "here (mean ± std over its runs, one seed each); `missing` marks a row not run yet."), ""]
    if not full:
        sections += [("No suite has been run at the `full` budget (the papers' recipes, meant for a GPU): no GPU "
                     "was available to the runs recorded here."), ""]
    for suite in suites:
        rows = collect(suite, budget, runs, kept=True)
        figure = draw_figure(suite, rows, out.parent / "experiments" / suite.name / f"results_{budget}.png", budget)
        sections.append(suite_section(suite, budget, rows, figure, out.parent))
    return "\n".join(sections)
