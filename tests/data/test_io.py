"""The one image reader (training, evaluation and predict) and the label reader, on images with known pixels."""
import numpy as np
import pytest
from PIL import Image

from embedseg.data.io import IMAGE_EXTENSIONS, image_size, read_image, read_label

GREY16 = np.array([[500, 1500], [3500, 4500]], np.uint16)  # uses 4000 of the 65535 levels
GREY16_AS_8BIT = np.array([[0, 64], [191, 255]], np.uint8)  # (v - 500) / 4000 * 255, rounded


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_grey_is_stretched_from_its_own_range(tmp_path, suffix):
    Image.fromarray(GREY16).save(tmp_path / f"cells{suffix}")
    image = read_image(tmp_path / f"cells{suffix}")
    assert image.dtype == np.uint8 and image.shape == (2, 2, 3)
    assert np.array_equal(image, np.repeat(GREY16_AS_8BIT[..., None], 3, axis=2))


def test_float_and_constant_images(tmp_path):
    Image.fromarray(np.array([[-1.0, 0.0], [1.0, 3.0]], np.float32)).save(tmp_path / "f.tif")
    assert read_image(tmp_path / "f.tif")[..., 0].tolist() == [[0, 64], [128, 255]]
    Image.fromarray(np.full((2, 3), 700, np.uint16)).save(tmp_path / "flat.png")
    assert not read_image(tmp_path / "flat.png").any()  # no range to stretch: black


def test_8bit_images_keep_their_values(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, np.full((5, 4), 9, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.bmp")
    Image.fromarray(np.full((5, 4), 7, np.uint8)).save(tmp_path / "grey.png")  # dark, but not stretched
    for name in ("rgb.png", "rgba.png", "rgb.bmp"):
        assert np.array_equal(read_image(tmp_path / name), rgb), name
    assert np.array_equal(read_image(tmp_path / "grey.png"), np.full((5, 4, 3), 7, np.uint8))


def test_palette_and_one_bit_images(tmp_path):
    palette = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    palette.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    palette.save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").tolist() == [[[10, 20, 30], [200, 100, 0]], [[200, 100, 0], [10, 20, 30]]]
    Image.fromarray(np.array([[True, False]])).save(tmp_path / "bit.png")
    assert read_image(tmp_path / "bit.png")[..., 0].tolist() == [[255, 0]]


def test_errors_name_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read .*broken\.png"):
        read_image(tmp_path / "broken.png")
    Image.fromarray(np.tile(np.array([0, 1, 2], np.uint8), (3, 3, 1))).save(tmp_path / "colour_mask.png")
    with pytest.raises(ValueError, match=r"colour_mask\.png: mask must be a single-channel"):
        read_label(tmp_path / "colour_mask.png", "mask")


def test_labels_keep_16bit_ids(tmp_path):
    ids = np.array([[0, 300], [65535, 7]], np.uint16)
    Image.fromarray(ids).save(tmp_path / "ids.png")
    labels = read_label(tmp_path / "ids.png")
    assert labels.dtype == np.int64 and labels.tolist() == ids.tolist()


def test_extensions_are_lower_case_suffixes():
    assert all(e.startswith(".") and e == e.lower() for e in IMAGE_EXTENSIONS)
    assert {".png", ".tif", ".jpg"} <= set(IMAGE_EXTENSIONS)


def test_real_val_images_are_read_unchanged(shared_data):
    """The real data sets are 8-bit RGB: the reader gives their pixels as stored."""
    for name in ("dsb2018", "cvppp_a1"):
        folder = shared_data / name / "val" / "images"
        if not folder.is_dir():
            pytest.skip(f"{folder} not found")
        for path in sorted(folder.iterdir()):
            with Image.open(path) as im:
                assert np.array_equal(read_image(path), np.asarray(im.convert("RGB"))), path


def test_images_above_the_pixel_limit_are_refused_from_their_header(tmp_path, monkeypatch):
    Image.fromarray(np.full((5, 6), 7, np.uint8)).save(tmp_path / "grey.png")  # 30 pixels
    assert read_image(tmp_path / "grey.png").shape == (5, 6, 3)  # the default limit is 10000 x 10000
    monkeypatch.setenv("EMBEDSEG_MAX_PIXELS", "30")
    assert image_size(tmp_path / "grey.png") == (6, 5) and read_image(tmp_path / "grey.png").shape == (5, 6, 3)
    monkeypatch.setenv("EMBEDSEG_MAX_PIXELS", "29")
    for read in (read_image, read_label, image_size):
        with pytest.raises(ValueError, match=r"grey\.png: 6x5 = 30 pixels, more than the limit of 29 pixels \(set "
                                             r"\$EMBEDSEG_MAX_PIXELS"):
            read(tmp_path / "grey.png")
    monkeypatch.setenv("EMBEDSEG_MAX_PIXELS", "many")
    with pytest.raises(ValueError, match=r"\$EMBEDSEG_MAX_PIXELS = 'many': expected a positive number of pixels"):
        image_size(tmp_path / "grey.png")
