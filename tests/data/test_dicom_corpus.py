"""DICOM as hospitals export it: every file of pydicom's own test corpus (the ``test_files``
folder its wheel ships: compressed, colour, palette, big-endian, malformed, non-image files) is
decoded by :func:`read_image` or refused with a maco_cxr error that names it, and every single
frame pydicom itself decodes, we decode too (the decoder plugins are dependencies)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from maco_cxr.data.io import read_image, read_image_with_info
from maco_cxr.errors import DataError

CORPUS = Path(pydicom.__file__).parent / "data" / "test_files"
FILES = sorted(path for path in CORPUS.rglob("*") if path.is_file())

# malformed headers and truncated files are what the corpus is for; pydicom warns about them
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _luma(rgb: np.ndarray) -> np.ndarray:
    """Pillow's ITU-R 601-2 luma (what colour PNG/JPEG become) in integer arithmetic."""
    rgb = rgb.astype(np.int64)
    return ((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)


def _pydicom_frame(path: Path) -> np.ndarray | None:
    """pydicom's own pixels when it decodes the file as exactly one frame, else None."""
    try:
        dataset = pydicom.dcmread(path, force=True)
        pixels = dataset.pixel_array
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
    except Exception:  # noqa: BLE001 - the oracle: whatever pydicom cannot decode is not required of us
        return None
    return pixels if frames == 1 else None


def test_every_corpus_file_is_decoded_or_named() -> None:
    assert len(FILES) >= 150, f"pydicom's test corpus is missing from {CORPUS}"
    decoded: list[str] = []
    refused: dict[str, str] = {}
    problems: list[str] = []
    for path in FILES:
        name = str(path.relative_to(CORPUS))
        try:
            pixels = read_image(path)
        except DataError as err:  # ImageReadError is a DataError
            refused[name] = str(err)
            if str(path) not in str(err):
                problems.append(f"{name}: the error does not name the file: {err}")
        except Exception as err:  # noqa: BLE001 - any other exception type is the failure under test
            problems.append(f"{name}: {type(err).__name__}: {err}")
        else:
            decoded.append(name)
            if pixels.dtype != np.uint8 or pixels.ndim != 2:
                problems.append(f"{name}: read as {pixels.dtype} {pixels.shape}, not uint8 [H, W]")
        if name not in decoded and _pydicom_frame(path) is not None:
            problems.append(f"{name}: pydicom decodes this single frame but read_image refused it: {refused.get(name)}")
    assert not problems, "\n".join(problems)
    # the transfer syntaxes PACS exports use, and colour secondary captures, all decode
    for name in (
        "JPGExtended.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "JPEGLSNearLossless_16.dcm",
        "JPEG2000.dcm",
        "SC_rgb_jpeg_gdcm.dcm",
        "SC_ybr_full_422_uncompressed.dcm",
        "examples_palette.dcm",
        "examples_jpeg2k.dcm",
        "MR_small_RLE.dcm",
    ):
        assert name in decoded, refused.get(name)
    assert "(0028,0008) NumberOfFrames holds '1A'" in refused["badVR.dcm"]
    assert "multi-frame DICOM (30 frames)" in refused["examples_ybr_color.dcm"]
    assert "multi-frame DICOM (2 frames)" in refused["SC_rgb_rle_2frame.dcm"]
    assert "no pixel data" in refused["rtplan.dcm"]


def test_a_ybr_jpeg_secondary_capture_is_the_luma_of_pydicoms_rgb() -> None:
    path = CORPUS / "SC_rgb_dcmtk_+eb+cy+np.dcm"  # JPEG baseline, YBR_FULL_422
    rgb = pydicom.dcmread(path).pixel_array  # pydicom's colour-space conversion to RGB
    assert rgb.shape == (100, 100, 3) and rgb.dtype == np.uint8
    pixels, info = read_image_with_info(path)
    np.testing.assert_array_equal(pixels, _luma(rgb))
    assert info.converted_from_colour and info.mode == "YBR_FULL_422"
    # the same picture stored as uncompressed RGB reads within the JPEG's loss
    twin = read_image(CORPUS / "SC_rgb_rle.dcm")
    assert np.abs(pixels.astype(int) - twin).max() <= 8


def test_a_palette_image_is_the_luma_of_its_lookup_table() -> None:
    from pydicom.pixels import apply_color_lut

    path = CORPUS / "examples_palette.dcm"
    dataset = pydicom.dcmread(path)
    rgb16 = apply_color_lut(dataset.pixel_array, dataset)  # 16-bit entries
    rgb8 = np.rint(rgb16.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)
    np.testing.assert_array_equal(read_image(path), _luma(rgb8))


def test_jpeg_ls_lossless_is_pydicoms_pixels_windowed() -> None:
    path = CORPUS / "MR_small_jpeg_ls_lossless.dcm"
    dataset = pydicom.dcmread(path)
    assert (float(dataset.WindowCenter), float(dataset.WindowWidth)) == (600.0, 1600.0)
    stored = dataset.pixel_array.astype(np.float64)
    # DICOM linear window onto the signed 16-bit range, which then maps to 0..255
    expected = np.rint(np.clip(((stored - 599.5) / 1599.0 + 0.5) * 255.0, 0.0, 255.0)).astype(np.uint8)
    pixels = read_image(path)
    np.testing.assert_array_equal(pixels, expected)
    np.testing.assert_array_equal(pixels, read_image(CORPUS / "MR_small.dcm"))  # lossless: its twin


def test_twelve_bit_jpeg_extended_maps_its_stored_range() -> None:
    path = CORPUS / "JPGExtended.dcm"  # BitsStored 12, no window
    stored = pydicom.dcmread(path).pixel_array.astype(np.float64)
    np.testing.assert_array_equal(read_image(path), np.rint(stored * 255.0 / 4095.0).astype(np.uint8))


def test_prepare_reports_each_colour_image_it_made_grey(tmp_path: Path, caplog) -> None:
    import json

    from maco_cxr.data.datasets.base import ChestXrayDataset, Record
    from maco_cxr.data.prepare import prepare_dataset

    rgb_png = tmp_path / "rgb.png"
    Image.fromarray(np.full((40, 40, 3), (200, 30, 30), np.uint8)).save(rgb_png)
    paths = [CORPUS / "MR_small.dcm", CORPUS / "SC_rgb_dcmtk_+eb+cy+np.dcm", CORPUS / "examples_palette.dcm", rgb_png]
    dataset = ChestXrayDataset([Record(image_path=path) for path in paths])
    with caplog.at_level("INFO", logger="maco_cxr.data.prepare"):
        report = prepare_dataset(dataset, tmp_path / "store", 32)
    expected = [
        {"path": str(paths[1]), "colour": "DICOM YBR_FULL_422"},
        {"path": str(paths[2]), "colour": "DICOM PALETTE COLOR"},
        {"path": str(rgb_png), "colour": "PNG RGB"},
    ]
    assert report.n_ok == 4 and report.colour_converted == expected
    saved = json.loads((tmp_path / "store" / "prepare_report.json").read_text())
    assert saved["n_colour_converted"] == 3 and saved["colour_converted"] == expected
    assert "3 of 4 images were colour (DICOM YBR_FULL_422: 1, DICOM PALETTE COLOR: 1, PNG RGB: 1)" in caplog.text
