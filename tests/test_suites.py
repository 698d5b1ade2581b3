"""Paper-table suites: every shipped suite resolves; tables render from fabricated results (column
order, reference rows, mean ± std, missing runs); `reproduce` skips finished rows and continues an
interrupted one, runs only the rows --rows names, trains a recipe once across suites, copies the same
tuning search on the same network instead of running it again, and scores an external row's label
images (perfect ones: AP 1.0; none: the row is missing; a second run: mean and std; a wrong size: an
error naming the file); `table --all` keeps the results of runs whose folders are gone (strict JSON)
and `reproduce --skip-kept` runs only the seeds not kept; `reproduce --budget smoke` runs every
shipped suite end to end (real data)."""
from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY_CONFIG
from PIL import Image

from embedseg.cli import main
from embedseg.config import ConfigError, load_config
from embedseg.engine import trainer
from embedseg.engine.checkpoint import load_checkpoint
from embedseg.engine.run import dataset_for_split
from embedseg.engine.tuning import metric_family
from embedseg.grouping import GROUPERS
from embedseg.suites import load_suite, suite_names
from embedseg.suites import reproduce as reproduce_module
from embedseg.suites.render import collect, experiments_markdown, format_table
from embedseg.suites.reproduce import keep_results, result_file, row_dir, row_overrides
from embedseg.suites.spec import BUDGETS, EXPERIMENTS
from embedseg.suites.training import recipe_key, training_recipe, training_seconds


@pytest.mark.parametrize("name", suite_names())
def test_every_shipped_suite_resolves(name):
    suite = load_suite(name)
    assert (suite.folder / "README.md").is_file() and suite.rows
    metric_family(suite.tune_metric)
    for row in suite.rows:
        assert row.external or row.grouper in GROUPERS.names()
        for budget in BUDGETS:
            if row.config_for(budget) is not None:
                config = load_config(row.config_for(budget), [*row_overrides(suite, row, budget, 0), *suite.evaluate])
                assert row.external or config.data.tune, f"{row.name}: tuning needs a tune split"


SUITE = """
title: fabricated
columns: [AP, match_AP50, abs_DiC]
references:
  - {name: Paper method, values: [0.5, 0.75, 1.5], note: their split}
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
    assert lines[2] == "| Paper method (their split) | paper | 50.0 | 75.0 | 1.50 |  |"
    std = 100 * np.std([0.60, 0.62, 0.64], ddof=1)
    assert lines[3] == f"| ours A | ours (cpu) | 62.0 ± {std:.1f} | 85.0 ± 5.0 | 2.00 ± 1.00 | 3 |"
    assert lines[4] == "| ours B | ours (cpu) | missing | missing | missing | 0 |"
    csv = format_table(suite, collect(suite, "cpu", runs), "csv").splitlines()
    assert csv[0] == "method,source,AP,match_AP50,abs_DiC,seeds" and csv[3].endswith(",missing,missing,missing,0")
    tex = format_table(suite, collect(suite, "cpu", runs), "tex")
    assert r"62.0 $\pm$ 2.0" in tex and r"match\_AP50" in tex


def test_table_all_keeps_the_results_of_runs_that_are_gone(tmp_path):
    (tmp_path / "suite.yaml").write_text(SUITE)
    suite = load_suite(tmp_path)
    out = tmp_path / "repo" / "EXPERIMENTS.md"
    first, second = tmp_path / "runs1", tmp_path / "runs2"
    for seed, ap in enumerate([0.60, 0.62]):
        fabricate(first, suite, suite.rows[0], seed, {"AP": ap, "APm": float("nan"), "match_AP50": 0.8, "abs_DiC": 1.0})
    text = experiments_markdown([suite], "cpu", first, out)
    assert "| ours A | ours (cpu) | 61.0 ± 1.4 | 80.0 ± 0.0 | 1.00 ± 0.00 | 2 |" in text
    kept = tmp_path / "results" / "cpu"  # beside the suite.yaml
    assert sorted(p.relative_to(kept).as_posix() for p in kept.rglob("*.json")) == \
        ["ours_a/seed0.json", "ours_a/seed1.json"]
    kept_scores = json.loads((kept / "ours_a" / "seed0.json").read_text(), parse_constant=pytest.fail)["scores"]
    assert kept_scores["APm"] is None and kept_scores["AP"] == 0.60  # strict JSON: NaN kept as null
    # the first runs folder is gone; a second one holds seed 1 again (run anew) and row B
    fabricate(second, suite, suite.rows[0], 1, {"AP": 0.70, "match_AP50": 0.8, "abs_DiC": 1.0})
    fabricate(second, suite, suite.rows[1], 0, {"AP": 0.50, "match_AP50": 0.7, "abs_DiC": 2.0})
    shutil.rmtree(first)
    text = experiments_markdown([suite], "cpu", second, out)
    assert "| ours A | ours (cpu) | 65.0 ± 7.1 | 80.0 ± 0.0 | 1.00 ± 0.00 | 2 |" in text
    assert "| ours B | ours (cpu) | 50.0 | 70.0 | 2.00 | 1 |" in text
    assert json.loads((kept / "ours_a" / "seed1.json").read_text())["scores"]["AP"] == 0.70
    # `table SUITE` shows the runs folder alone
    assert "| ours A | ours (cpu) | 70.0 |" in format_table(suite, collect(suite, "cpu", second))


def test_reproduce_skip_kept_runs_only_the_seeds_not_kept(tmp_path, monkeypatch):
    (tmp_path / "suite.yaml").write_text(SUITE)
    suite = load_suite(tmp_path)
    fabricate(tmp_path / "old_runs", suite, suite.rows[0], 0, {"AP": 0.6, "match_AP50": 0.8, "abs_DiC": 1.0})
    keep_results(suite, "cpu", tmp_path / "old_runs")
    ran = []
    monkeypatch.setattr(reproduce_module, "run_row", lambda suite, row, budget, seed, runs: ran.append((row.name, seed)))
    reproduce_module.reproduce(suite, "cpu", 2, tmp_path / "runs", skip_kept=True)
    assert ran == [("ours A", 1), ("ours B", 0), ("ours B", 1)]
    ran.clear()
    reproduce_module.reproduce(suite, "cpu", 2, tmp_path / "runs")
    assert ran == [("ours A", 0), ("ours A", 1), ("ours B", 0), ("ours B", 1)]


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


def test_reproduce_rows_runs_only_the_named_rows(tmp_path, capsys):
    suite = tiny_suite(tmp_path)
    runs = tmp_path / "runs"
    assert main(["reproduce", str(tmp_path), "--seeds", "1", "--runs", str(runs), "--rows", "LONG"]) == 0
    assert result_file(row_dir(runs, suite, "cpu", suite.rows[2], 0), suite.rows[2]).is_file()
    assert not row_dir(runs, suite, "cpu", suite.rows[0], 0).exists()
    table = capsys.readouterr().out
    assert "| longer | ours (cpu) |" in table and "| meanshift | ours (cpu) | missing | missing | 0 |" in table
    assert main(["reproduce", str(tmp_path), "--runs", str(runs), "--rows", "spatial"]) == 2
    assert "--rows 'spatial' matches no row of" in capsys.readouterr().err


def test_training_recipe_holds_what_changes_the_weights(tiny_config_file):
    def key(*overrides):
        return recipe_key(training_recipe(load_config(tiny_config_file, list(overrides))))

    assert key("name=other", "train.log_every=7", "train.checkpoint_every=3", "eval.max_dets=5",
               "grouping.meanshift.bandwidth=2.0") == key()
    assert len({key(), key("seed=1"), key("model.embedding_dim=4"), key("train.steps=3"), key("data.val_split=tune")}) == 5
    # evaluating while training picks best.pt with the first grouper on eval's images: they count then
    assert key("train.eval_every=1", "grouping.meanshift.bandwidth=2.0") != key("train.eval_every=1")
    assert key("train.eval_every=1", "eval.max_images=1") != key("train.eval_every=1")


def test_training_seconds_add_the_parts_of_a_resumed_training(tmp_path):
    records = [{"step": 20, "elapsed_s": 10.0}, {"step": 40, "elapsed_s": 21.0}, {"step": 40, "val_AP": 0.5},
               {"step": 60, "elapsed_s": 9.0}, {"step": 80, "elapsed_s": 19.5}]  # resumed after step 40
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert training_seconds(tmp_path / "log.jsonl") == 21.0 + 19.5
    assert training_seconds(tmp_path / "missing.jsonl") is None


# the shipped suites' smoke budget, on fewer images
SMOKE = {"set": ["train.steps=2", "data.tune={fraction: 0.001, seed: 0}", "eval.max_images=1"], "trials": 2}


def quickstart_suite(folder, rows, metric: str):
    """A suite of `rows` (name, grouper, set) on experiments/quickstart.yaml with a smoke budget, tuned for
    `metric`."""
    folder.mkdir()
    (folder / "suite.yaml").write_text(yaml.safe_dump({
        "title": folder.name, "columns": ["AP"], "evaluate": ["eval.metrics=[coco]"], "tune": {"metric": metric},
        "rows": [{"name": name, "config": {"cpu": str(EXPERIMENTS / "quickstart.yaml")}, "grouper": grouper,
                  "set": overrides} for name, grouper, overrides in rows], "budgets": {"smoke": SMOKE}}))
    return load_suite(folder)


def test_reproduce_trains_a_recipe_once_across_suites(tmp_path, monkeypatch, caplog):
    first = quickstart_suite(tmp_path / "first", [("components", "components", [])], "AP")
    second = quickstart_suite(tmp_path / "second", [("components", "components", []),
                                                    ("dim 8", "components", ["model.embedding_dim=8"])], "AP50")
    runs, trained = tmp_path / "runs", []
    real_train = reproduce_module.train
    caplog.set_level("INFO", logger="embedseg")

    def counting_train(config, run_dir, resume=False, overwrite=False):
        trained.append(run_dir)
        return real_train(config, run_dir, resume=resume, overwrite=overwrite)

    monkeypatch.setattr(reproduce_module, "train", counting_train)
    args = ["--budget", "smoke", "--seeds", "1", "--runs", str(runs)]
    assert main(["reproduce", str(first.folder), *args]) == 0
    source = row_dir(runs, first, "smoke", first.rows[0], 0)
    assert trained == [source]
    (source / "training.json").unlink()  # as a run trained before training.json: found from its last.pt
    assert main(["reproduce", str(second.folder), *args]) == 0
    reused, dim8 = (row_dir(runs, second, "smoke", row, 0) for row in second.rows)
    assert trained == [source, dim8]  # the components row trained nothing
    assert (reused / "checkpoints" / "last.pt").samefile(source / "checkpoints" / "last.pt")
    assert (reused / "log.jsonl").read_bytes() == (source / "log.jsonl").read_bytes()
    assert json.loads((reused / "tune.json").read_text())["components"]["metric"] == "AP50"  # its own tuning
    assert yaml.safe_load((reused / "config.yaml").read_text())["name"] == "second_components_s0"
    record = json.loads((reused / "training.json").read_text())
    assert record["trained_in"] == "first/smoke/components/seed0" and record["seconds"] > 0
    assert json.loads((source / "training.json").read_text())["key"] == record["key"]
    assert json.loads((dim8 / "training.json").read_text())["key"] != record["key"]
    assert json.loads(result_file(reused, second.rows[0]).read_text())["network"]["trained_in"] == record["trained_in"]
    assert any("first/smoke/components/seed0" in r.getMessage() and "reused" in r.getMessage() for r in caplog.records)


def count_tune_runs(monkeypatch) -> list[Path]:
    """Make reproduce's tune_run record each run directory it tunes; returns that (growing) list."""
    tuned, real_tune = [], reproduce_module.tune_run

    def counting_tune(run_dir, *args, **kwargs):
        tuned.append(run_dir)
        return real_tune(run_dir, *args, **kwargs)

    monkeypatch.setattr(reproduce_module, "tune_run", counting_tune)
    return tuned


def test_reproduce_copies_the_same_search_on_the_same_network(tmp_path, monkeypatch, caplog):
    first, second = (quickstart_suite(tmp_path / name, [("components", "components", [])], "AP")
                     for name in ("first", "second"))
    runs, tuned = tmp_path / "runs", count_tune_runs(monkeypatch)
    caplog.set_level("INFO", logger="embedseg")
    args = ["--budget", "smoke", "--seeds", "1", "--runs", str(runs)]
    assert main(["reproduce", str(first.folder), *args]) == 0
    assert main(["reproduce", str(second.folder), *args]) == 0
    source, copy = row_dir(runs, first, "smoke", first.rows[0], 0), row_dir(runs, second, "smoke", second.rows[0], 0)
    assert tuned == [source]
    source_tuned, copy_tuned = (yaml.safe_load((d / "tuned.yaml").read_text()) for d in (source, copy))
    assert copy_tuned["grouping"] == source_tuned["grouping"]
    assert copy_tuned["tuned"]["components"]["copied_from"] == str(source)
    assert copy_tuned["tuned"]["components"]["key"] == source_tuned["tuned"]["components"]["key"]
    trials = [json.loads((d / "tune.json").read_text())["components"]["trials"] for d in (source, copy)]
    assert trials[0] == trials[1] and trials[0]
    scores = [json.loads(result_file(d, row).read_text())["scores"] for d, row in ((source, first.rows[0]),
                                                                                 (copy, second.rows[0]))]
    assert scores[0]["AP"] == scores[1]["AP"]
    assert any("copied from" in r.getMessage() for r in caplog.records)


def test_reproduce_tunes_again_when_the_search_changed(tmp_path, monkeypatch, caplog):
    suite = quickstart_suite(tmp_path / "suite", [("components", "components", [])], "AP")
    runs, tuned = tmp_path / "runs", count_tune_runs(monkeypatch)
    caplog.set_level("INFO", logger="embedseg")
    args = ["--budget", "smoke", "--seeds", "1", "--runs", str(runs)]
    run_dir = row_dir(runs, suite, "smoke", suite.rows[0], 0)

    def reproduce_tuning_key() -> str:
        assert main(["reproduce", str(suite.folder), *args]) == 0
        return yaml.safe_load((run_dir / "tuned.yaml").read_text())["tuned"]["components"]["key"]

    def evaluate_again() -> str:
        result_file(run_dir, suite.rows[0]).unlink()
        return reproduce_tuning_key()

    key = reproduce_tuning_key()
    assert evaluate_again() == key and tuned == [run_dir]  # the same search: its tuning stands
    monkeypatch.setattr(GROUPERS.get("components"), "search_space", {"min_size": [7]})
    assert evaluate_again() != key and tuned == [run_dir, run_dir]
    trials = json.loads((run_dir / "tune.json").read_text())["components"]["trials"]
    assert any(t["block"]["min_size"] == 7 for t in trials)  # a value of the new search alone
    assert any("tuning it again" in r.getMessage() for r in caplog.records)


def external_suite(tmp_path, sizes=((40, 48), (32, 32))):
    """A one-class folder data set whose val images have planted nuclei, and a suite whose only row
    scores external label images of it."""
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        masks = np.zeros((h, w), np.uint16)
        masks[2:12, 3:15], masks[20:30, 5:25], masks[h - 6:h - 1, w - 6:w - 1] = 1, 2, 7
        for sub, array in (("images", rng.integers(0, 255, (h, w, 3), dtype=np.uint8)), ("masks", masks)):
            (tmp_path / "data" / "val" / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(tmp_path / "data" / "val" / sub / f"img{i}.png")
    (tmp_path / "peer.yaml").write_text(yaml.safe_dump({"data": {"dataset": {"name": "folder",
                                                                             "root": str(tmp_path / "data")}}}))
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({
        "title": "peer", "columns": ["AP", "match_AP50", "match_AP90"],
        "evaluate": ["eval.metrics=[matching_ap]", "eval.iou_thresholds=[0.5, 0.9]"],
        "rows": [{"name": "Peer 1.0", "run": "peer", "config": {"cpu": "peer.yaml"}, "external": True}]}))
    suite = load_suite(tmp_path)
    return suite, row_dir(tmp_path / "runs", suite, "cpu", suite.rows[0], 0) / "labels"


def test_external_row_scores_label_images(tmp_path, capsys, caplog):
    suite, labels = external_suite(tmp_path)
    args = ["reproduce", str(tmp_path), "--budget", "cpu", "--seeds", "3", "--runs", str(tmp_path / "runs")]
    assert main(args) == 0  # no label images yet: the row is missing, nothing fails
    assert "| Peer 1.0 | external (cpu) | missing | missing | missing | 0 |" in capsys.readouterr().out
    assert any(str(labels) in r.getMessage() and "README.md" in r.getMessage() for r in caplog.records)

    labels.mkdir(parents=True)
    Image.open(tmp_path / "data" / "val" / "masks" / "img0.png").save(labels / "img0.tif")  # 16-bit TIFF
    perfect = np.array(Image.open(tmp_path / "data" / "val" / "masks" / "img1.png"))
    Image.fromarray((perfect * 3).astype(np.uint16)).save(labels / "img1.png")  # other ids: the same instances
    (labels / "timing.json").write_text(json.dumps({"seconds": {"train": 12.5}, "group_ms_median": 22.0}))
    assert main(args) == 0
    assert "| Peer 1.0 | external (cpu) | 100.0 | 100.0 | 100.0 | 1 |" in capsys.readouterr().out
    result = json.loads(result_file(labels.parent, suite.rows[0]).read_text())
    assert result["external"] and result["images"] == 2 and result["seconds"]["train"] == 12.5
    assert result["scores"]["group_ms_median"] == 22.0 and result["scores"]["instances_per_image"] == 3.0
    assert not (labels.parents[1] / "seed1").exists()  # a seed without label images stays missing

    second = labels.parents[1] / "seed1" / "labels"  # a second run of the program
    second.mkdir(parents=True)
    Image.open(tmp_path / "data" / "val" / "masks" / "img0.png").save(second / "img0.png")
    half = perfect.copy()
    half[half == 2] = 0  # one of the three nuclei of img1 not found: 2 TP, 1 FN there
    Image.fromarray(half).save(second / "img1.png")
    assert main(args) == 0
    result = json.loads(result_file(second.parent, suite.rows[0]).read_text())
    assert result["seed"] == 1 and result["scores"]["match_AP50"] == pytest.approx((1 + 2 / 3) / 2)
    # the row is the mean and std over its two runs: (1 + 5/6) / 2 and std 0.118 of both matching APs
    assert "| 91.7 ± 11.8 | 91.7 ± 11.8 | 2 |" in capsys.readouterr().out


def test_external_row_refuses_a_label_image_of_another_size_or_none(tmp_path, capsys):
    suite, labels = external_suite(tmp_path)
    labels.mkdir(parents=True)
    Image.fromarray(np.zeros((40, 48), np.uint16)).save(labels / "img0.png")
    args = ["reproduce", str(tmp_path), "--budget", "cpu", "--runs", str(tmp_path / "runs")]
    assert main(args) == 2
    assert f"{labels} has no label image img1.png or img1.tif" in capsys.readouterr().err
    Image.fromarray(np.zeros((32, 31), np.uint16)).save(labels / "img1.png")
    assert main(args) == 2
    assert f"{labels / 'img1.png'} is 31x32 (WxH) but image 'img1' of the val split is 32x32" in capsys.readouterr().err
    assert not result_file(labels.parent, suite.rows[0]).exists()


def test_a_row_needs_a_grouper_or_external_not_both(tmp_path):
    row = {"name": "x", "config": {"cpu": "a.yaml"}, "grouper": "meanshift", "external": True}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({"rows": [row]}))
    with pytest.raises(ConfigError, match="row 'x' needs either a grouper"):
        load_suite(tmp_path)


def fabricate_perfect_labels(suite, row, budget: str, runs) -> None:
    """Ground truth of the images an external row scores, as its label images."""
    config = load_config(row.config_for(budget), [*row.overrides, *suite.budget_overrides(budget), *suite.evaluate])
    dataset = dataset_for_split(config, config.eval.split)
    labels = row_dir(runs, suite, budget, row, 0) / "labels"
    labels.mkdir(parents=True)
    for i in range(config.eval.max_images or len(dataset)):
        sample = dataset[i]
        Image.fromarray(sample["instances"].astype(np.uint16)).save(labels / f"{sample['name']}.png")


@pytest.mark.slow
@pytest.mark.parametrize("name", suite_names())
def test_reproduce_smoke_runs_every_shipped_suite_end_to_end(name, shared_data, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("EMBEDSEG_DATA", str(shared_data))
    runs = tmp_path / "runs"
    suite = load_suite(name)
    for row in suite.rows:
        if row.external:
            fabricate_perfect_labels(suite, row, "smoke", runs)
    assert main(["reproduce", name, "--budget", "smoke", "--seeds", "1", "--runs", str(runs)]) == 0
    for row in suite.rows:
        result = json.loads(result_file(row_dir(runs, suite, "smoke", row, 0), row).read_text())
        assert set(suite.columns) <= set(result["scores"]) and result["split"] == "val"
        assert (EXPERIMENTS / result["config"]).resolve() == row.config_for("smoke")  # no folder of this machine
        if row.external:
            assert all(result["scores"][column] == 1.0 for column in suite.columns)
    assert main(["table", name, "--budget", "smoke", "--runs", str(runs)]) == 0
    assert "missing" not in capsys.readouterr().out
