import numpy as np
import pytest
from PIL import Image

from embedseg.data import DATASETS, FolderDataset, SyntheticShapes, build_dataset, resolve_root, write_dataset


def synthetic(n=3, split="train"):
    return SyntheticShapes(split=split, num_images=n, size=48, min_radius=4.0, max_radius=10.0)


def test_registered_and_built_by_name(tmp_path, samples):
    samples.write_folder_sample(tmp_path)
    ds = build_dataset("folder", "train", root=str(tmp_path))
    assert "folder" in DATASETS and isinstance(ds, FolderDataset)
    assert len(ds) == 2 and ds.class_names == ["object"] and ds.num_classes == 1


def test_round_trip_is_identical(tmp_path):
    src = synthetic()
    root = write_dataset(src, tmp_path / "out", "train")
    assert (tmp_path / "out" / "classes.txt").read_text().split() == list(src.class_names)
    ds = FolderDataset(str(root), "train")
    assert ds.class_names == list(src.class_names) and ds.num_classes == 2
    assert len(ds) == len(src)
    for i in range(len(src)):
        a, b = src[i], ds[i]
        for key in ("image", "instances", "semantic"):
            assert b[key].dtype == a[key].dtype, key
            assert np.array_equal(a[key], b[key]), key
        assert b["name"] == a["name"] and b["image_id"] == i


def test_16bit_masks_round_trip(tmp_path):
    class Many:
        class_names = ("cell",)

        def __len__(self):
            return 1

        def __getitem__(self, i):
            inst = np.arange(1, 21 * 20 + 1, dtype=np.int32).reshape(21, 20)  # ids up to 420
            return {"image": np.zeros((21, 20, 3), np.uint8), "instances": inst,
                    "semantic": (inst > 0).astype(np.int64), "image_id": 0, "name": "many"}

    write_dataset(Many(), tmp_path, "train")
    with Image.open(tmp_path / "train" / "masks" / "many.png") as im:
        assert im.mode.startswith("I")  # 16 bit
    s = FolderDataset(tmp_path, "train")[0]
    assert np.array_equal(s["instances"], Many()[0]["instances"])


def test_refuses_to_overwrite(tmp_path):
    write_dataset(synthetic(2), tmp_path, "val")
    with pytest.raises(FileExistsError, match="val"):
        write_dataset(synthetic(2), tmp_path, "val")
    write_dataset(synthetic(1), tmp_path, "val", overwrite=True)
    assert len(FolderDataset(tmp_path, "val")) == 1  # stale files are gone
    write_dataset(synthetic(1, "test"), tmp_path, "test")  # other split, same classes: fine


def test_overwrite_replaces_only_the_samples_written_before(tmp_path):
    write_dataset(synthetic(3), tmp_path, "train")
    (tmp_path / "notes.txt").write_text("mine")  # beside the split: never looked at
    write_dataset(synthetic(2), tmp_path, "train", overwrite=True)
    assert FolderDataset(tmp_path, "train").stems == ["train_00000", "train_00001"]
    assert (tmp_path / "notes.txt").read_text() == "mine"
    (tmp_path / "train" / "masks" / "cell.png").write_bytes(b"a user's mask")  # not in all three folders
    (tmp_path / "train" / "images" / "raw").mkdir()
    with pytest.raises(FileExistsError, match=r"holds images/raw/, masks/cell\.png, which are not samples written"):
        write_dataset(synthetic(1), tmp_path, "train", overwrite=True)
    assert len(list((tmp_path / "train").rglob("*.png"))) == 7  # nothing was removed


def test_grey_and_rgba_images_and_defaults(tmp_path, samples):
    samples.write_folder_sample(tmp_path, stems=("g", "r"))
    Image.fromarray(np.full((12, 10), 7, np.uint8)).save(tmp_path / "train" / "images" / "g.png")
    Image.fromarray(np.full((12, 10, 4), 9, np.uint8)).save(tmp_path / "train" / "images" / "r.png")
    (tmp_path / "classes.txt").write_text("leaf\n\n")
    ds = FolderDataset(tmp_path, "train")
    assert ds.class_names == ["leaf"]
    for i in range(2):
        s = ds[i]
        assert s["image"].shape == (12, 10, 3) and s["image"].dtype == np.uint8
        assert s["instances"].dtype == np.int32 and s["semantic"].dtype == np.int64
        assert np.array_equal(s["semantic"], (s["instances"] > 0).astype(np.int64))
    assert [ds[i]["name"] for i in range(2)] == ["g", "r"]
    assert FolderDataset(tmp_path, "train", class_names=["a", "b"]).class_names == ["a", "b"]


def test_missing_split_or_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        FolderDataset(tmp_path, "nope")
    (tmp_path / "train" / "images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="masks"):
        FolderDataset(tmp_path, "train")
    (tmp_path / "train" / "masks").mkdir()
    with pytest.raises(ValueError, match="empty split"):
        FolderDataset(tmp_path, "train")


def test_image_without_mask_names_the_file(tmp_path, samples):
    samples.write_folder_sample(tmp_path)
    (tmp_path / "train" / "masks" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"b\.png"):
        FolderDataset(tmp_path, "train")


def test_size_mismatch_names_the_file(tmp_path, samples):
    samples.write_folder_sample(tmp_path)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "train" / "masks" / "b.png")
    ds = FolderDataset(tmp_path, "train")
    ds[0]
    with pytest.raises(ValueError, match=r"size mismatch.*masks/b\.png"):
        ds[1]


def test_non_integer_mask_names_the_file(tmp_path, samples):
    samples.write_folder_sample(tmp_path, stems=("a",))
    (tmp_path / "train" / "masks" / "a.png").unlink()
    Image.fromarray(np.full((12, 10), 0.5, np.float32)).save(tmp_path / "train" / "masks" / "a.tif")
    with pytest.raises(ValueError, match=r"a\.tif.*integer"):
        FolderDataset(tmp_path, "train")[0]


def test_negative_mask_names_the_file(tmp_path, samples):
    samples.write_folder_sample(tmp_path, stems=("a",))
    (tmp_path / "train" / "masks" / "a.png").unlink()
    Image.fromarray(np.full((12, 10), -2, np.int32)).save(tmp_path / "train" / "masks" / "a.tif")
    with pytest.raises(ValueError, match=r"a\.tif.*non-negative"):
        FolderDataset(tmp_path, "train")[0]


def test_semantic_errors_name_the_file(tmp_path, samples):
    samples.write_folder_sample(tmp_path)
    (tmp_path / "train" / "semantic").mkdir()
    Image.fromarray(np.full((12, 10), 3, np.uint8)).save(tmp_path / "train" / "semantic" / "a.png")
    with pytest.raises(FileNotFoundError, match=r"no semantic map .*semantic/b\.<png\|tif\|tiff>"):
        FolderDataset(tmp_path, "train")
    Image.fromarray(np.ones((12, 10), np.uint8)).save(tmp_path / "train" / "semantic" / "b.png")
    ds = FolderDataset(tmp_path, "train", class_names=["x", "y"])
    assert ds[1]["semantic"].max() == 1
    with pytest.raises(ValueError, match=r"semantic/a\.png.*class id 3"):
        ds[0]


def test_unreadable_image_names_the_file(tmp_path, samples):
    samples.write_folder_sample(tmp_path, stems=("a",))
    (tmp_path / "train" / "images" / "a.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"images/a\.png"):
        FolderDataset(tmp_path, "train")[0]


def test_tif_images_and_16bit_tif_masks(tmp_path):
    """Microscopy style: a 16-bit grey TIF image (rescaled to 0..255) and a 16-bit TIF mask."""
    for sub in ("images", "masks"):
        (tmp_path / "train" / sub).mkdir(parents=True)
    image = np.zeros((6, 8), np.uint16)
    image[:, 4:] = 4000
    image[0, 0] = 1000
    mask = np.zeros((6, 8), np.uint16)
    mask[1:3, 1:3] = 300  # an id beyond 8 bits
    Image.fromarray(image).save(tmp_path / "train" / "images" / "cell.tif")
    Image.fromarray(mask).save(tmp_path / "train" / "masks" / "cell.tif")
    s = FolderDataset(tmp_path, "train")[0]
    assert s["image"].shape == (6, 8, 3) and s["image"].dtype == np.uint8
    assert s["image"][0, 0, 0] == round(1000 / 4000 * 255) and s["image"][0, 5, 2] == 255 and s["image"][1, 1, 1] == 0
    assert s["instances"][1, 1] == 300 and (s["instances"] > 0).sum() == 4


def test_relative_roots_resolve_against_embedseg_data(tmp_path, monkeypatch, samples):
    samples.write_folder_sample(tmp_path / "store" / "nuclei")
    samples.write_folder_sample(tmp_path / "here" / "local")
    monkeypatch.chdir(tmp_path / "here")
    monkeypatch.setenv("EMBEDSEG_DATA", str(tmp_path / "store"))
    assert FolderDataset("nuclei", "train").root == tmp_path / "store" / "nuclei"
    assert FolderDataset("local", "train").root == tmp_path / "here" / "local"  # then the current folder
    assert resolve_root(str(tmp_path / "store" / "nuclei")) == tmp_path / "store" / "nuclei"  # absolute
    with pytest.raises(FileNotFoundError, match=r"store/missing or .*here/missing does not exist"):
        FolderDataset("missing", "train")
    monkeypatch.delenv("EMBEDSEG_DATA")
    with pytest.raises(FileNotFoundError, match=r"here/nuclei does not exist; \$EMBEDSEG_DATA is not set"):
        FolderDataset("nuclei", "train")


def test_real_nuclei_and_leaves_load(shared_data):
    for name, size, dtype_max in (("dsb2018", None, 375), ("cvppp_a1", (530, 500), 20)):
        root = shared_data / name
        if not root.is_dir():
            pytest.skip(f"{root} not found")
        ds = FolderDataset(str(root), "val")
        s = ds[0]
        assert s["image"].dtype == np.uint8 and s["image"].shape[2] == 3
        assert size is None or s["instances"].shape == size
        assert 1 <= s["instances"].max() <= dtype_max and s["instances"].min() == 0
