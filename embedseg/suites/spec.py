"""A suite: the rows of one paper table, as `experiments/<suite>/suite.yaml` declares them.

    title: the table's caption
    paper: where the reference rows come from
    columns: [match_AP50, ...]  # keys of the evaluation's scores, in table order
    percent: false  # show fractions (3 decimals, as the paper) or percent (1 decimal)
    evaluate: ["eval.metrics=[matching_ap]", ...]  # --set overrides for the val evaluation of every row
    tune: {metric: match_AP50, trials: 24}  # `embedseg tune` of every row, on the config's tune split
    figure: iou  # iou: columns against their IoU threshold; bars: one bar group per row;
                 # ap_vs_time: AP against group_ms_median, a point per row; none
    references:  # copied from the paper; shown above ours, never re-run
      - {name: EmbedSeg, values: [0.876, ...], note: "their split, GPU"}  # shown after the name
    rows:  # ours: trained, tuned and evaluated by `embedseg reproduce`
      - name: discriminative, meanshift
        config: {cpu: ../dsb2018/cpu.yaml, full: ../dsb2018/full.yaml}  # per budget
        grouper: meanshift
        set: [model.embedding_dim=8]  # optional: the row's own overrides
        run: dsb  # optional: rows that name the same run share its training (one network, several groupers)
        evaluate: [eval.oracle=[foreground]]  # optional: the row's own tune and evaluation overrides (ablations)
      - name: EmbedSeg 0.2.5, same box  # another program's predictions, scored here (embedseg.suites.external)
        config: {cpu: ../dsb2018/cpu.yaml}  # its eval split, metrics and thresholds; no training, no grouper
        external: true  # label images of its k-th run in <runs>/<suite>/<budget>/<run>/seed<k>/labels/
    budgets:  # overrides per budget; smoke runs the cpu config with these
      smoke: {set: [train.steps=3], trials: 2}

A row runs at a budget when its config names one for it (smoke uses the cpu config).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from embedseg.config import ConfigError, read_yaml

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
BUDGETS = ("smoke", "cpu", "full")
FIGURES = ("iou", "bars", "ap_vs_time", "none")


@dataclass
class Reference:
    name: str
    values: list  # one per column (None: not reported)
    note: str = ""


@dataclass
class Row:
    name: str
    configs: dict[str, Path]  # budget -> config file
    grouper: str  # "" for an external row
    overrides: list[str] = field(default_factory=list)
    run: str = ""  # the run folder's name; rows with the same one share the trained network
    evaluate: list[str] = field(default_factory=list)  # the row's own tune/evaluation overrides
    external: bool = False  # scores label images another program made, rather than a network of ours

    def config_for(self, budget: str) -> Path | None:
        return self.configs.get("cpu" if budget == "smoke" else budget)

    @property
    def slug(self) -> str:
        """The row's name as a file name."""
        return re.sub(r"[^a-z0-9]+", "_", self.name.lower()).strip("_")

    @property
    def run_name(self) -> str:
        """The folder of the row's runs under the suite's."""
        return self.run or self.slug


@dataclass
class Suite:
    name: str
    folder: Path
    title: str
    paper: str
    columns: list[str]
    rows: list[Row]
    references: list[Reference] = field(default_factory=list)
    percent: bool = True
    evaluate: list[str] = field(default_factory=list)
    tune_metric: str = "AP"
    trials: int = 24
    figure: str = "bars"
    budgets: dict = field(default_factory=dict)

    def budget_overrides(self, budget: str) -> list[str]:
        return list((self.budgets.get(budget) or {}).get("set", []))

    def budget_trials(self, budget: str) -> int:
        return int((self.budgets.get(budget) or {}).get("trials", self.trials))


def suite_row(raw: dict, path: Path) -> Row:
    """One entry of a suite.yaml's `rows`; a row of ours names a grouper, an external row none."""
    where, name = str(path), raw.get("name")
    unknown = set(raw) - {"name", "config", "grouper", "set", "run", "evaluate", "external"}
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: every row needs a name, e.g. {{name: discriminative loss, meanshift, ...}}")
    if unknown:
        raise ConfigError(f"{where}: row {name!r} has unknown key(s) {', '.join(sorted(unknown))}")
    if not isinstance(raw.get("config"), dict) or set(raw["config"]) - set(BUDGETS):
        raise ConfigError(f"{where}: row {name!r} needs config: {{budget: file}} with budgets among "
                          f"{', '.join(BUDGETS)}")
    external = raw.get("external", False)
    if not isinstance(external, bool) or external == ("grouper" in raw):
        raise ConfigError(f"{where}: row {name!r} needs either a grouper (a network of ours) or external: true "
                          "(label images another program made), not both")
    return Row(name, {b: (path.parent / p).resolve() for b, p in raw["config"].items()}, raw.get("grouper", ""),
               list(raw.get("set") or []), raw.get("run", ""), list(raw.get("evaluate") or []), external)


def suite_names() -> list[str]:
    """Every suite shipped under experiments/ (a folder with a suite.yaml)."""
    return sorted(p.parent.name for p in EXPERIMENTS.glob("*/suite.yaml"))


def load_suite(name_or_path: str | Path) -> Suite:
    """The suite `name` (experiments/<name>/suite.yaml) or the suite.yaml at a path."""
    path = Path(name_or_path)
    path = path / "suite.yaml" if path.is_dir() else path
    if not path.is_file():
        path = EXPERIMENTS / str(name_or_path) / "suite.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no suite {str(name_or_path)!r}: expected experiments/<suite>/suite.yaml or a path "
                                f"to one; shipped suites: {', '.join(suite_names()) or 'none'}")
    raw = read_yaml(path)
    where = str(path)
    unknown = set(raw) - {"title", "paper", "columns", "percent", "evaluate", "tune", "figure", "references", "rows",
                          "budgets"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    columns = list(raw.get("columns") or [])
    references = [Reference(r["name"], list(r["values"]), r.get("note", "")) for r in raw.get("references") or []]
    for ref in references:
        if len(ref.values) != len(columns):
            raise ConfigError(f"{where}: reference {ref.name!r} has {len(ref.values)} values for {len(columns)} columns")
    rows = [suite_row(r, path) for r in raw.get("rows") or []]
    if len({r.slug for r in rows}) != len(rows):
        raise ConfigError(f"{where}: two rows share a name")
    for row in rows:
        twins = [r for r in rows if r.run_name == row.run_name]
        if any((r.configs, r.overrides, r.external) != (row.configs, row.overrides, row.external) for r in twins):
            raise ConfigError(f"{where}: rows sharing run {row.run_name!r} must have the same config, set and external")
    tune = raw.get("tune") or {}
    figure = raw.get("figure", "bars")
    if figure not in FIGURES:
        raise ConfigError(f"{where}: figure {figure!r} is not one of {', '.join(FIGURES)}")
    if figure == "ap_vs_time" and not {"AP", "group_ms_median"} <= set(columns):
        raise ConfigError(f"{where}: figure ap_vs_time needs the columns AP and group_ms_median")
    return Suite(path.parent.name, path.parent, raw.get("title", path.parent.name), raw.get("paper", ""), columns,
                 rows, references, bool(raw.get("percent", True)), list(raw.get("evaluate") or []),
                 tune.get("metric", "AP"), int(tune.get("trials", 24)), figure, raw.get("budgets") or {})
