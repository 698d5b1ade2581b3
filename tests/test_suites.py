"""Paper-table suites: every shipped suite resolves; tables render from fabricated results (column
order, reference rows, mean ± std, missing runs); `reproduce` skips finished rows and continues an
interrupted one; `reproduce --budget smoke` runs every shipped suite end to end (real data)."""
from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import yaml
from conftest import TINY_CONFIG

from embedseg.cli import main
from embedseg.config import load_config
from embedseg.engine import trainer
from embedseg.engine.checkpoint import load_checkpoint
from embedseg.engine.tuning import metric_family
from embedseg.grouping import GROUPERS
from embedseg.suites import load_suite, suite_names
from embedseg.suites import reproduce as reproduce_module
from embedseg.suites.render import collect, format_table
from embedseg.suites.reproduce import result_file, row_dir, row_overrides
from embedseg.suites.spec import BUDGETS


@pytest.mark.parametrize("name", suite_names())
def test_every_shipped_suite_resolves(name):
    suite = load_suite(name)
    assert (suite.folder / "README.md").is_file() and suite.rows
    metric_family(suite.tune_metric)
    for row in suite.rows:
        assert row.grouper in GROUPERS.names()
        for budget in BUDGETS:
            if row.config_for(budget) is not None:
                config = load_config(row.config_for(budget), [*row_overrides(suite, row, budget, 0), *suite.evaluate])
                assert config.data.tune, f"{row.name}: tuning needs a tune split"


SUITE = """
title: fabricated
columns: [AP, match_AP50, abs_DiC]
references:
  - {name: Paper method, values: [0.5, 0.75, 1.5]}
rows:
  - {name: ours A, config: {cpu: tiny.yaml}, grouper: meanshift}
  - {name: ours B, config: {cpu: tiny.yaml}, grouper: components}
"""


def fabricate(runs, suite, row, seed: int, scores: dict) -> None:
    path = result_file(row_dir(runs, suite, "cpu", row, seed), row)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"scores": scores, "date": "2026-11-29", "commit": "abc", "machine": "x"}))


def test_table_renders_references_mean_std_and_missing_rows(tmp_path):
    (tmp_path / "suite.yaml").write_text(SUITE)
    suite = load_suite(tmp_path)
    runs = tmp_path / "runs"
    for seed, (ap, m50, dic) in enumerate([(0.60, 0.80, 1.0), (0.62, 0.90, 2.0), (0.64, 0.85, 3.0)]):
        fabricate(runs, suite, suite.rows[0], seed, {"AP": ap, "match_AP50": m50, "abs_DiC": dic})
    lines = format_table(suite, collect(suite, "cpu", runs)).splitlines()
    assert lines[0] == "| method | source | AP | match_AP50 | abs_DiC | seeds |"
    assert lines[2] == "| Paper method | paper | 50.0 | 75.0 | 1.50 |  |"
    std = 100 * np.std([0.60, 0.62, 0.64], ddof=1)
    assert lines[3] == f"| ours A | ours (cpu) | 62.0 ± {std:.1f} | 85.0 ± 5.0 | 2.00 ± 1.00 | 3 |"
    assert lines[4] == "| ours B | ours (cpu) | missing | missing | missing | 0 |"
    csv = format_table(suite, collect(suite, "cpu", runs), "csv").splitlines()
    assert csv[0] == "method,source,AP,match_AP50,abs_DiC,seeds" and csv[3].endswith(",missing,missing,missing,0")
    tex = format_table(suite, collect(suite, "cpu", runs), "tex")
    assert r"62.0 $\pm$ 2.0" in tex and r"match\_AP50" in tex


def tiny_suite(tmp_path):
    """Two rows sharing one tiny run (two groupers) and a third with a run of its own."""
    (tmp_path / "tiny.yaml").write_text(TINY_CONFIG + "\n")
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({
        "title": "tiny", "columns": ["AP", "match_AP50"], "evaluate": ["eval.metrics=[coco, matching_ap]"],
        "tune": {"metric": "AP", "trials": 2}, "figure": "bars",
        "rows": [{"name": "meanshift", "run": "shared", "config": {"cpu": "tiny.yaml"}, "grouper": "meanshift",
                  "set": ["data.tune={fraction: 0.25}"]},
                 {"name": "components", "run": "shared", "config": {"cpu": "tiny.yaml"}, "grouper": "components",
                  "set": ["data.tune={fraction: 0.25}"]},
                 {"name": "longer", "config": {"cpu": "tiny.yaml"}, "grouper": "meanshift",
                  "set": ["data.tune={fraction: 0.25}", "train.steps=4"]}]}))
    return load_suite(tmp_path)


def test_reproduce_skips_finished_rows_and_continues_an_interrupted_one(tmp_path, monkeypatch, capsys):
    suite = tiny_suite(tmp_path)
    runs = tmp_path / "runs"
    shared, longer = row_dir(runs, suite, "cpu", suite.rows[0], 0), row_dir(runs, suite, "cpu", suite.rows[2], 0)
    stop = {"at": None}
    real_train, build = reproduce_module.train, trainer.build_criterion

    def train_stopping_the_longer_row(config, run_dir, resume=False, overwrite=False):
        stop["at"] = 1 if run_dir == longer and not resume else None  # SIGTERM in its first run's second step
        return real_train(config, run_dir, resume=resume, overwrite=overwrite)

    def build_stopping(spec):
        criterion = build(spec)
        forward = criterion.forward

        def changed(outputs, batch, step=None):
            if step == stop["at"]:
                os.kill(os.getpid(), signal.SIGTERM)
            return forward(outputs, batch, step=step)
        criterion.forward = changed
        return criterion

    monkeypatch.setattr(reproduce_module, "train", train_stopping_the_longer_row)
    monkeypatch.setattr(trainer, "build_criterion", build_stopping)
    args = ["reproduce", str(tmp_path), "--seeds", "1", "--runs", str(runs)]
    assert main(args) == 143
    assert "continue with: embedseg reproduce" in capsys.readouterr().err
    assert result_file(shared, suite.rows[0]).is_file() and result_file(shared, suite.rows[1]).is_file()
    assert load_checkpoint(longer / "checkpoints" / "last.pt")["step"] == 2
    assert not result_file(longer, suite.rows[2]).exists()
    finished = {p: p.read_bytes() for p in shared.rglob("*") if p.is_file()}

    assert main(args) == 0
    assert {p: p.read_bytes() for p in shared.rglob("*") if p.is_file()} == finished  # never redone
    assert load_checkpoint(longer / "checkpoints" / "last.pt")["step"] == 4
    steps = [json.loads(line)["step"] for line in (longer / "log.jsonl").read_text().splitlines()]
    assert [s for s in steps if s is not None] == [1, 2, 3, 4]  # resumed after step 2, nothing trained twice
    result = json.loads(result_file(longer, suite.rows[2]).read_text())
    assert result["grouping"] == yaml.safe_load((longer / "tuned.yaml").read_text())["grouping"]["meanshift"]
    assert set(yaml.safe_load((shared / "tuned.yaml").read_text())["grouping"]) == {"meanshift", "components"}
    table = capsys.readouterr().out
    assert "| meanshift | ours (cpu) |" in table and "missing" not in table


@pytest.mark.slow
@pytest.mark.parametrize("name", suite_names())
def test_reproduce_smoke_runs_every_shipped_suite_end_to_end(name, shared_data, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("EMBEDSEG_DATA", str(shared_data))
    runs = tmp_path / "runs"
    assert main(["reproduce", name, "--budget", "smoke", "--seeds", "1", "--runs", str(runs)]) == 0
    suite = load_suite(name)
    for row in suite.rows:
        result = json.loads(result_file(row_dir(runs, suite, "smoke", row, 0), row).read_text())
        assert set(suite.columns) <= set(result["scores"]) and result["split"] == "val"
    assert main(["table", name, "--budget", "smoke", "--runs", str(runs)]) == 0
    assert "missing" not in capsys.readouterr().out
