import numpy as np
import pytest
from PIL import Image

from embedseg.cli import main
from embedseg.config import ConfigError
from embedseg.data.check import check_dataset, format_report, instance_classes


def test_clean_folder_reports_counts_and_exits_zero(folder_sample, samples, capsys):
    samples.write_folder_sample(folder_sample, "val", stems=("v",), size=(20, 16))
    reports = check_dataset(str(folder_sample), ["train", "val"], progress=False)
    train, val = reports
    assert (train.num_images, train.instances, dict(train.sizes)) == (2, [2, 2], {"10x12": 2})
    assert (val.num_images, val.instances, dict(val.sizes)) == (1, [2], {"16x20": 1})
    assert dict(train.class_counts) == {"object": 4} and not train.problems and not val.problems
    assert main(["data", "check", str(folder_sample)]) == 0
    out = capsys.readouterr().out
    assert "problems: 0" in out and "train: sizes (WxH): 10x12 x2" in out and "instances per class: object 4" in out


def test_every_problem_is_listed_with_its_file(folder_sample, capsys):
    train = folder_sample / "train"
    h, w = 12, 10
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(train / "images" / "nomask.png")  # image without mask
    for stem in ("small", "float", "negative", "broken"):
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(train / "images" / f"{stem}.png")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(train / "masks" / "small.png")  # size mismatch
    Image.fromarray(np.full((h, w), 0.5, np.float32)).save(train / "masks" / "float.tif")  # non-integer
    Image.fromarray(np.full((h, w), -3, np.int32)).save(train / "masks" / "negative.tif")  # negative
    Image.fromarray(np.zeros((h, w), np.uint8)).save(train / "masks" / "broken.png")
    (train / "images" / "broken.png").write_bytes(b"not an image")  # unreadable
    Image.fromarray(np.zeros((h, w), np.uint8)).save(train / "masks" / "orphan.png")  # mask without image
    (folder_sample / "val" / "images").mkdir(parents=True)
    (folder_sample / "val" / "masks").mkdir()  # empty split

    reports = check_dataset(str(folder_sample), ["train", "val", "test"], progress=False)
    problems = "\n".join(p for r in reports for p in r.problems)
    assert len([p for r in reports for p in r.problems]) == 7
    for pattern in (r"image without mask: .*images/nomask\.png", r"size mismatch: mask .*masks/small\.png",
                    r"masks/float\.tif: mask must hold integer labels", r"masks/negative\.tif: .*non-negative",
                    r"cannot read .*images/broken\.png", r"empty split: .*val/images",
                    r"split folder .*test does not exist"):
        assert __import__("re").search(pattern, problems), pattern
    assert reports[0].num_images == 7 and reports[0].instances == [2, 2]  # a and b still counted
    assert any("mask without image: " in w and "orphan.png" in w for w in reports[0].warnings)
    assert main(["data", "check", str(folder_sample), "--splits", "train,val,test"]) == 1
    out = capsys.readouterr().out
    assert "problems: 7" in out and "nomask.png" in out


def test_other_formats_go_through_their_dataset(coco_sample, samples, capsys):
    reports = check_dataset(str(coco_sample), ["val"], "coco", samples.COCO_PARAMS, progress=False)
    (val,) = reports
    assert val.num_images == 2 and val.instances == [4, 0] and val.ignore_images == 1
    assert dict(val.class_counts) == {"dog": 1, "cat": 2, "bird": 1} and not val.problems
    assert any("no instances" in w for w in val.warnings)
    args = ["data", "check", str(coco_sample), "--format", "coco", "--splits", "val,train",
            "--param", "annotations=annotations/instances_{split}.json", "--param", "images={split}"]
    assert main(args) == 1  # there is no train split
    assert "instances_train.json does not exist" in capsys.readouterr().out
    (coco_sample / "val" / "a.png").write_bytes(b"broken")
    (val,) = check_dataset(str(coco_sample), ["val"], "coco", samples.COCO_PARAMS, progress=False)
    assert len(val.problems) == 1 and "val/a.png" in val.problems[0]


def test_unknown_format_or_root(tmp_path, monkeypatch):
    monkeypatch.delenv("EMBEDSEG_DATA", raising=False)
    with pytest.raises(ConfigError, match="unknown dataset 'voc'; choose one of: .*coco"):
        check_dataset(str(tmp_path), ["train"], "voc")
    with pytest.raises(ConfigError, match="unknown key 'annotations' for dataset 'folder'; accepted: class_names"):
        check_dataset(str(tmp_path), ["train"], "folder", {"annotations": "a.json"})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere does not exist; .EMBEDSEG_DATA is not set"):
        check_dataset("nowhere", ["train"])
    assert main(["data", "check", str(tmp_path / "nowhere")]) == 2


def test_instance_classes_take_the_majority():
    inst = np.array([[1, 1, 1, 2], [3, 3, 0, 2], [-1, 5, 5, 5]])
    sem = np.array([[2, 2, 1, 1], [4, 4, 3, 1], [-1, 0, 3, 3]])
    assert instance_classes(inst, sem).tolist() == [2, 1, 4, 3]  # ids 1, 2, 3, 5


def test_report_text_lists_statistics(folder_sample):
    text = format_report(check_dataset(str(folder_sample), ["train"], progress=False), "ROOT", "folder")
    assert text.splitlines()[0] == "data check: ROOT (format folder)"
    row = next(line for line in text.splitlines() if line.startswith("train "))
    assert row.split() == ["train", "2", "2", "4", "2.00", "2", "2", "0"]


def test_real_data_sets_have_no_problems(shared_data):
    root = shared_data / "cvppp_a1"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    (val,) = check_dataset(str(root), ["val"], progress=False)
    assert not val.problems and val.num_images == 19 and sum(val.instances) == 318  # README: 318 leaves
    assert (min(val.instances), max(val.instances)) == (15, 19) and dict(val.sizes) == {"500x530": 19}
