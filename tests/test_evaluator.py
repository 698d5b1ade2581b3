"""The streaming evaluation engine: every grouper scored as it runs, figures' images kept, output cache,
and distributed (2-process gloo) evaluation giving exactly the 1-process metrics."""
from __future__ import annotations

import json
import pickle
import socket

import eval_workers
import numpy as np
import pytest
import torch.multiprocessing as mp

from embedseg.engine.evaluator import run_groupers, score_groupers
from embedseg.engine.output_cache import OutputCache, cache_outputs, reuse_or_cache
from embedseg.evaluation import evaluate_coco, evaluate_matching
from embedseg.evaluation.tables import format_table, metric_columns
from embedseg.structures import Instances

TIMING = ("group_ms_median", "group_ms_p90", "network_ms_median")


def _scores(metrics: dict, leave_out=TIMING) -> str:
    """The metrics as sorted JSON (exact float text, NaN equal to NaN), without timings."""
    return json.dumps({k: v for k, v in metrics.items() if k not in leave_out}, sort_keys=True)


def _box(rows, cols) -> np.ndarray:
    mask = np.zeros((20, 20), bool)
    mask[rows, cols] = True
    return mask


class ListDataset:
    """Samples whose ground truth is given as label maps; the image is the image index."""

    def __init__(self, label_maps):
        self.maps = label_maps

    def __len__(self):
        return len(self.maps)

    def __getitem__(self, i):
        return {"image": np.full((2, 2, 3), i, np.uint8), "instances": self.maps[i],
                "semantic": (self.maps[i] > 0).astype(np.int64), "image_id": i}


class Fixed:
    """A grouper that returns given predictions, image after image."""

    def __init__(self, predictions):
        self.predictions = iter(predictions)

    def __call__(self, outputs):
        return next(self.predictions)


def test_score_groupers_puts_every_metric_in_one_dict_per_grouper():
    gt_map = np.zeros((20, 20), np.int64)
    gt_map[0:5, 0:5], gt_map[0:5, 10:15], gt_map[10:15, 0:5] = 1, 2, 3
    gt = Instances.from_label_map(gt_map)
    pred = Instances(np.stack([_box(slice(0, 5), slice(0, 5)), _box(slice(0, 5), slice(10, 13)),  # IoU 1, 0.6
                               _box(slice(10, 15), slice(10, 15))]), np.ones(3), np.ones(3))  # on no GT
    ds = ListDataset([gt_map, gt_map])
    run = run_groupers(lambda image: {}, ds, {"good": Fixed([gt, gt]), "bad": Fixed([pred, gt])},
                       lambda: eval_workers.build_evaluators(eval_workers.METRICS, ["thing"]), progress=False)
    results = score_groupers(run)
    good, bad = results["good"], results["bad"]
    for key in ("AP", "match_AP50", "SBD", "DiC", "abs_DiC", "mAPr50", "mAPr", "group_ms_median"):
        assert key in good and key in bad, key
    assert good["AP"] == pytest.approx(1.0) and good["match_AP50"] == 1.0 and good["SBD"] == 1.0
    assert bad["match_AP50"] == pytest.approx((0.5 + 1.0) / 2) and bad["DiC"] == 0.0
    assert good["instances_per_image"] == 3.0 and run.names == ["0", "1"]
    table = format_table(results, keys=metric_columns(results, ("AP", "APl")), first="grouper").splitlines()
    assert table[0] == ("| grouper | AP | APl | match_AP50 | missed_merged | missed_low_iou | missed_not_found | SBD | "
                        "DiC | abs_DiC | mAPr50 | mAPr60 | mAPr70 | mAPr80 | mAPr90 | mAPr |")
    assert table[2].startswith("| good | 100.0 | - | 100.0 | 0.00 | 0.00 | 0.00 | 100.0 | 0.00 | 0.00 | 100.0")
    assert table[3].startswith("| bad | ") and "| 0.00 | 0.00 | 1.00 |" in table[3]  # the GT under no prediction


def test_streamed_scores_equal_the_list_functions_and_only_figures_are_kept():
    ds = eval_workers.dataset()
    predictor = eval_workers.OraclePredictor(ds)
    run = run_groupers(predictor, ds, eval_workers.groupers(), lambda: eval_workers.evaluators(ds.class_names),
                       keep_images=2, progress=False)
    results = score_groupers(run)
    assert len(run.names) == len(ds) and len(run.images) == len(run.ground_truth) == 2
    assert all(len(p) == 2 for p in run.predictions.values())
    truth = [Instances.from_label_map(ds[i]["instances"], labels=ds[i]["semantic"]) for i in range(len(ds))]
    for name, grouper in eval_workers.groupers().items():
        predictions = [grouper(predictor(ds[i]["image"])) for i in range(len(ds))]
        expected = {**evaluate_coco(truth, predictions, ds.class_names),
                    **evaluate_matching(truth, predictions, eval_workers.METRICS[1:])}
        assert _scores(results[name], (*TIMING, "instances_per_image")) == _scores(expected)
    assert results["meanshift"]["AP"] > 0.8  # the oracle's instances are found: the comparison is not vacuous


def _free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def test_two_process_evaluation_gives_exactly_the_one_process_metrics(tmp_path):
    out = tmp_path / "rank0.pkl"
    mp.spawn(eval_workers.distributed_rank, args=(2, _free_address(), str(out)), nprocs=2, join=True)
    gathered = pickle.loads(out.read_bytes())
    ds = eval_workers.dataset()
    run = run_groupers(eval_workers.OraclePredictor(ds), ds, eval_workers.groupers(),
                       lambda: eval_workers.evaluators(ds.class_names), progress=False)
    assert gathered["indices"] == list(range(len(ds))) and gathered["names"] == run.names
    for name, single in score_groupers(run).items():
        assert _scores(gathered["results"][name]) == _scores(single)
        assert 0 < single["AP"] and single["match_AP50"] > 0


class Counting:
    """A predictor counting its calls: pixel positions in the embedding that float16 would round to
    half a pixel, seediness values near 1 that float16 would tie (0.99999 to 0.99988 all round to 1.0)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, image):
        self.calls += 1
        value = float(image[0, 0, 0])
        seediness = 1 - 1e-5 * np.arange(1, 13, dtype=np.float32).reshape(3, 4)
        return {"embedding": np.full((2, 3, 4), value + 300.3, np.float32), "seediness": seediness}


def test_output_cache_returns_the_outputs_and_is_reused_for_the_same_key(tmp_path):
    ds = ListDataset([np.zeros((3, 4), np.int64)] * 3)
    predictor = Counting()
    cache = cache_outputs(predictor, ds, tmp_path / "cache", key={"split": "val"}, progress=False)
    assert predictor.calls == 3 and len(cache) == 3
    reread = OutputCache(tmp_path / "cache")
    for i in range(3):
        expected = predictor(ds[i]["image"])
        assert reread[i].keys() == expected.keys()
        for name in expected:
            assert reread[i][name].dtype == np.float32
            np.testing.assert_array_equal(reread[i][name], expected[name])
    assert len(np.unique(reread[0]["seediness"])) == 12  # stored as float32: no ties in the seed order
    predictor.calls = 0
    assert reuse_or_cache(predictor, ds, tmp_path / "cache", [0, 2], {"split": "val"}).indices == [0, 1, 2]
    assert predictor.calls == 0  # every image was cached with this key
    with pytest.raises(FileExistsError, match=r"cache holds the outputs of another network pass \(split differ\)"):
        reuse_or_cache(predictor, ds, tmp_path / "cache", [0], {"split": "test"})
    assert reuse_or_cache(predictor, ds, tmp_path / "cache", [1], {"split": "test"}, overwrite=True,
                          progress=False).indices == [1]
    with pytest.raises(KeyError, match="image 0 is not in the output cache"):
        OutputCache(tmp_path / "cache")[0]  # the replaced cache lists image 1 only; image 0's file is stale
    index = tmp_path / "cache" / "cache.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "format": 2}))  # as an older embedseg wrote it
    with pytest.raises(FileExistsError, match=r"holds outputs in an older storage format \(2: the embedding as float16\)"):
        reuse_or_cache(predictor, ds, tmp_path / "cache", [1], {"split": "test"})
    with pytest.raises(FileNotFoundError, match="holds no output cache"):
        OutputCache(tmp_path)


def test_compare_grouping_cache_reuses_one_network_pass(tmp_path, tiny_config_file, capsys):
    from embedseg.cli import main

    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    assert main(["train", str(tiny_config_file), "--out", str(run_dir), "--no-eval"]) == 0
    compare = ["compare-grouping", str(run_dir), "--groupers", "components", "--cache", str(cache)]
    assert main(compare) == 0
    first = json.loads((run_dir / "grouping_val.json").read_text())["groupers"]
    assert OutputCache(cache).indices == [0, 1]  # the tiny config's two val images
    written = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert main([*compare, "--overwrite"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == written  # read, not recomputed
    again = json.loads((run_dir / "grouping_val.json").read_text())["groupers"]
    assert _scores(again["components"], (*TIMING, "group_ms_median")) == _scores(first["components"],
                                                                                  (*TIMING, "group_ms_median"))
    capsys.readouterr()
    assert main([*compare, "--split", "train"]) == 2  # another split's outputs are not in this cache
    assert "holds the outputs of another network pass (dataset, split differ)" in capsys.readouterr().err


class CountEvaluator:
    """A user's evaluator (the README's example): mean number of predicted instances per image."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.counts = []

    def process(self, truth, prediction, crowd=None):
        self.counts.append(len(prediction))

    def state(self):
        return list(self.counts)

    def merge(self, states):
        for state in states:
            self.counts.extend(state)

    def evaluate(self):
        return {"mean_count": sum(self.counts) / len(self.counts)}


def test_a_custom_evaluator_runs_beside_the_built_in_ones():
    ds = eval_workers.dataset()
    run = run_groupers(eval_workers.OraclePredictor(ds), ds, {"meanshift": eval_workers.groupers()["meanshift"]},
                       lambda: [*eval_workers.build_evaluators(["coco"], ds.class_names), CountEvaluator()],
                       progress=False)
    scores = score_groupers(run)["meanshift"]
    assert scores["mean_count"] == np.mean(run.instances["meanshift"]) == scores["instances_per_image"]
    assert scores["mean_count"] == np.mean([len(np.unique(ds[i]["instances"][ds[i]["instances"] > 0]))
                                            for i in range(len(ds))])  # the oracle's objects, one each
    assert scores["AP"] > 0.8
