"""Exact pixel values for every file kind :mod:`maco_cxr.data.io` reads, and its errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maco_cxr.data.io import ImageInfo, is_dicom, read_image, read_image_with_info, read_mask
from maco_cxr.errors import DataError, ImageReadError

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "cxr-real"
REAL_DICOM = ASSETS / "dicom" / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
FAKE_MONO1 = ASSETS / "dicom" / "Fake_MONOHR1.dcm"


def _write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    bits_stored: int,
    photometric: str = "MONOCHROME2",
    signed: bool = False,
    extra: dict[str, object] | None = None,
    with_pixels: bool = True,
    samples: int = 1,
    frames: int | None = None,
) -> Path:
    """Write an uncompressed explicit-VR little-endian DICOM with the given stored values."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = samples
    ds.Rows, ds.Columns = pixels.shape[:2] if frames is None else pixels.shape[1:3]
    allocated = 8 if bits_stored <= 8 else 16
    ds.BitsAllocated = allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if samples > 1:
        ds.PlanarConfiguration = 0
    if frames is not None:
        ds.NumberOfFrames = frames
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    if with_pixels:
        dtype = {(8, False): np.uint8, (16, False): np.uint16, (16, True): np.int16}[(allocated, signed)]
        ds.PixelData = np.ascontiguousarray(pixels, dtype=dtype).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# --- Pillow formats ---------------------------------------------------------------------------


def test_png_8bit_exact(tmp_path: Path) -> None:
    pixels = np.array([[0, 1, 127], [128, 254, 255]], dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (2, 3)
    np.testing.assert_array_equal(out, pixels)


def test_png_16bit_maps_full_range(tmp_path: Path) -> None:
    pixels = np.array([[0, 257, 1000, 65535]], dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    # v * 255 / 65535 rounded: 1000 -> 3.89 -> 4
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), [[0, 1, 4, 255]])


def test_palette_png_uses_luminance(tmp_path: Path) -> None:
    image = Image.fromarray(np.array([[0, 1, 2]], dtype=np.uint8), mode="P")
    image.putpalette([0, 0, 0, 255, 255, 255, 255, 0, 0] + [0] * (3 * 253))
    image.save(tmp_path / "p.png")
    # red -> 0.299 * 255 = 76.2 -> 76 (ITU-R 601-2)
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), [[0, 255, 76]])


def test_rgb_png_luminance(tmp_path: Path) -> None:
    pixels = np.array([[[255, 0, 0], [0, 255, 0], [90, 90, 90]]], dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), [[76, 150, 90]])


def test_rgba_png_composited_on_black(tmp_path: Path) -> None:
    pixels = np.array([[[200, 100, 50, 128], [10, 10, 10, 255], [255, 255, 255, 0]]], dtype=np.uint8)
    Image.fromarray(pixels, mode="RGBA").save(tmp_path / "rgba.png")
    # L(200,100,50) = 124.2 -> 124; 124 * 128 / 255 = 62.2 -> 62; transparent -> 0
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), [[62, 10, 0]])


def test_grey_alpha_png_composited_on_black(tmp_path: Path) -> None:
    pixels = np.array([[[200, 128], [77, 255], [255, 0]]], dtype=np.uint8)
    Image.fromarray(pixels, mode="LA").save(tmp_path / "la.png")
    # 200 * 128 / 255 = 100.4 -> 100
    np.testing.assert_array_equal(read_image(tmp_path / "la.png"), [[100, 77, 0]])


def test_bilevel_png(tmp_path: Path) -> None:
    Image.fromarray(np.array([[True, False]])).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_image(tmp_path / "b.png"), [[255, 0]])


def test_jpeg_exif_orientation_applied(tmp_path: Path) -> None:
    stored = np.zeros((20, 40), dtype=np.uint8)  # H=20, W=40 as stored
    stored[:10, :20] = 255  # bright top-left quadrant
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: rotate 90 degrees clockwise to display
    Image.fromarray(stored).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = read_image(tmp_path / "rot.jpg")
    assert out.shape == (40, 20)
    # clockwise rotation moves the stored top-left quadrant to the top-right
    assert out[3, 16] > 230 and out[3, 3] < 25 and out[36, 16] < 25
    expected = np.rot90(stored, k=-1).astype(int)
    assert np.abs(out.astype(int) - expected).mean() < 4


def test_jpeg_without_exif_keeps_geometry(tmp_path: Path) -> None:
    stored = np.tile(np.arange(0, 240, 8, dtype=np.uint8), (16, 1))
    Image.fromarray(stored).save(tmp_path / "plain.jpg", quality=100)
    out = read_image(tmp_path / "plain.jpg")
    assert out.shape == (16, 30)
    assert np.abs(out.astype(int) - stored.astype(int)).max() <= 3


def test_real_png_reads_grey() -> None:
    out = read_image(ASSETS / "images" / "nih_00000001_000.png")
    assert out.dtype == np.uint8 and out.ndim == 2 and out.shape == (512, 512)
    assert out.std() > 10


# --- errors ------------------------------------------------------------------------------------


def test_missing_file_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(ImageReadError, match="nope.png: no such file"):
        read_image(missing)
    with pytest.raises(ImageReadError, match="nope.png"):
        read_mask(missing)


def test_directory_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_image(tmp_path)


def test_truncated_png_raises_never_partial(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.png: cannot decode") as info:
        read_image(tmp_path / "cut.png")
    assert isinstance(info.value, DataError)
    assert info.value.__cause__ is not None


def test_not_an_image_raises(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("this is not an image\n")
    with pytest.raises(ImageReadError, match=r"notes\.png: cannot decode"):
        read_image(tmp_path / "notes.png")


# --- DICOM -------------------------------------------------------------------------------------


def test_is_dicom_by_magic_and_suffix(tmp_path: Path) -> None:
    pixels = np.array([[1, 2]], dtype=np.uint8)
    no_suffix = _write_dicom(tmp_path / "image.bin", pixels, bits_stored=8)
    Image.fromarray(pixels).save(tmp_path / "image.png")
    (tmp_path / "empty.dcm").write_bytes(b"")
    assert is_dicom(no_suffix)
    assert is_dicom(REAL_DICOM)
    assert is_dicom(tmp_path / "empty.dcm")
    assert not is_dicom(tmp_path / "image.png")
    np.testing.assert_array_equal(read_image(no_suffix), pixels)


def test_dicom_8bit_monochrome2_and_1(tmp_path: Path) -> None:
    pixels = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    mono2 = _write_dicom(tmp_path / "m2.dcm", pixels, bits_stored=8)
    mono1 = _write_dicom(tmp_path / "m1.dcm", pixels, bits_stored=8, photometric="MONOCHROME1")
    np.testing.assert_array_equal(read_image(mono2), pixels)
    np.testing.assert_array_equal(read_image(mono1), [[255, 155], [55, 0]])


def test_dicom_12bit_uses_stored_bits_range(tmp_path: Path) -> None:
    pixels = np.array([[0, 4095, 2048, 1000]], dtype=np.uint16)
    path = _write_dicom(tmp_path / "b12.dcm", pixels, bits_stored=12)
    # v * 255 / 4095: 2048 -> 127.53 -> 128, 1000 -> 62.27 -> 62
    np.testing.assert_array_equal(read_image(path), [[0, 255, 128, 62]])


def test_dicom_signed_pixels(tmp_path: Path) -> None:
    pixels = np.array([[-2048, 0, 2047]], dtype=np.int16)
    path = _write_dicom(tmp_path / "s.dcm", pixels, bits_stored=12, signed=True)
    # (v + 2048) * 255 / 4095: 0 -> 127.53 -> 128
    np.testing.assert_array_equal(read_image(path), [[0, 128, 255]])


def test_dicom_rescale_slope_intercept(tmp_path: Path) -> None:
    pixels = np.array([[0, 4095, 1000]], dtype=np.uint16)
    positive = _write_dicom(
        tmp_path / "pos.dcm", pixels, bits_stored=12, extra={"RescaleSlope": 2, "RescaleIntercept": -1024}
    )
    negative = _write_dicom(
        tmp_path / "neg.dcm", pixels, bits_stored=12, extra={"RescaleSlope": -1, "RescaleIntercept": 4095}
    )
    # a linear rescale of the stored range keeps the fractions: 1000/4095*255 = 62.27
    np.testing.assert_array_equal(read_image(positive), [[0, 255, 62]])
    # a negative slope inverts: output 4095 - v, 3095/4095*255 = 192.73 -> 193
    np.testing.assert_array_equal(read_image(negative), [[255, 0, 193]])


def test_dicom_window_center_width(tmp_path: Path) -> None:
    pixels = np.array([[1000, 1536, 1800, 2048, 2559, 3000]], dtype=np.uint16)
    path = _write_dicom(tmp_path / "w.dcm", pixels, bits_stored=12, extra={"WindowCenter": 2048, "WindowWidth": 1024})
    # DICOM LINEAR: c' = 2047.5, w' = 1023, y = ((x - c') / w' + 0.5) clipped to [0, 1]
    # 1800 -> 0.2581 * 255 = 65.8 -> 66; 2048 -> 0.50049 * 255 = 127.62 -> 128
    np.testing.assert_array_equal(read_image(path), [[0, 0, 66, 128, 255, 255]])


def test_dicom_rescale_then_window(tmp_path: Path) -> None:
    pixels = np.array([[0, 500, 1000, 1100, 1500]], dtype=np.uint16)
    path = _write_dicom(
        tmp_path / "rw.dcm",
        pixels,
        bits_stored=12,
        extra={"RescaleSlope": 2, "RescaleIntercept": -1000, "WindowCenter": 1000, "WindowWidth": 2000},
    )
    # modality values -1000, 0, 1000, 1200, 2000; window c' = 999.5, w' = 1999:
    # 1000 -> 0.50025 -> 127.56 -> 128; 1200 -> 0.60030 -> 153.08 -> 153
    np.testing.assert_array_equal(read_image(path), [[0, 0, 128, 153, 255]])


def test_dicom_window_on_monochrome1_inverts_after_windowing(tmp_path: Path) -> None:
    pixels = np.array([[1000, 2048, 3000]], dtype=np.uint16)
    path = _write_dicom(
        tmp_path / "w1.dcm",
        pixels,
        bits_stored=12,
        photometric="MONOCHROME1",
        extra={"WindowCenter": 2048, "WindowWidth": 1024},
    )
    np.testing.assert_array_equal(read_image(path), [[255, 127, 0]])


def test_dicom_voi_lut_sequence(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.add_new(0x00283002, "US", [4, 0, 12])  # LUT Descriptor: 4 entries, first 0, 12 bit
    item.add_new(0x00283006, "US", [0, 1000, 3000, 4000])  # LUT Data
    pixels = np.array([[0, 1, 2, 3, 10]], dtype=np.uint8)
    path = _write_dicom(
        tmp_path / "lut.dcm",
        pixels,
        bits_stored=8,
        extra={"VOILUTSequence": [item], "WindowCenter": 1, "WindowWidth": 1},
    )
    # the LUT wins over the window; range = the LUT's entries 0..4000; 10 -> last entry
    # 1000/4000*255 = 63.75 -> 64; 3000/4000*255 = 191.25 -> 191
    np.testing.assert_array_equal(read_image(path), [[0, 64, 191, 255, 255]])


def test_dicom_rescale_then_voi_lut(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.add_new(0x00283002, "US", [4, 0, 12])
    item.add_new(0x00283006, "US", [0, 1000, 3000, 4000])
    pixels = np.array([[0, 1, 2]], dtype=np.uint8)
    path = _write_dicom(
        tmp_path / "rlut.dcm",
        pixels,
        bits_stored=8,
        extra={"VOILUTSequence": [item], "RescaleSlope": 1, "RescaleIntercept": 1},
    )
    # modality values 1, 2, 3 index the LUT: 1000, 3000, 4000
    np.testing.assert_array_equal(read_image(path), [[64, 191, 255]])


def test_dicom_empty_window_falls_back_to_stored_range(tmp_path: Path) -> None:
    pixels = np.array([[0, 2048, 4095]], dtype=np.uint16)
    path = _write_dicom(
        tmp_path / "ew.dcm",
        pixels,
        bits_stored=12,
        extra={"WindowCenter": None, "WindowWidth": None, "RescaleSlope": -1, "RescaleIntercept": 4095},
    )
    # empty window elements are ignored: modality 4095 - v over its range, 2047 -> 127.47
    np.testing.assert_array_equal(read_image(path), [[255, 127, 0]])


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    path = _write_dicom(tmp_path / "header.dcm", np.zeros((2, 2), np.uint8), bits_stored=8, with_pixels=False)
    with pytest.raises(ImageReadError, match=r"header\.dcm: .*no pixel data"):
        read_image(path)


@pytest.mark.filterwarnings("ignore:End of file reached")
def test_truncated_compressed_dicom(tmp_path: Path) -> None:
    data = REAL_DICOM.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(ImageReadError, match=r"cut\.dcm: .*truncated or corrupt"):
        read_image(tmp_path / "cut.dcm")


def test_truncated_uncompressed_dicom(tmp_path: Path) -> None:
    pixels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4096
    data = _write_dicom(tmp_path / "full.dcm", pixels, bits_stored=12).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 1000])
    with pytest.raises(ImageReadError, match=r"cut\.dcm: cannot decode the DICOM pixel data"):
        read_image(tmp_path / "cut.dcm")


def test_empty_dcm_file(tmp_path: Path) -> None:
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.dcm: empty or not a DICOM file"):
        read_image(tmp_path / "empty.dcm")


def _luma(rgb: np.ndarray) -> np.ndarray:
    """Pillow's ITU-R 601-2 luma in integers (L = R 299/1000 + G 587/1000 + B 114/1000, rounded)."""
    rgb = rgb.astype(np.int64)
    return ((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)


def test_dicom_rgb_becomes_the_luma_of_a_colour_png(tmp_path: Path) -> None:
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (200, 0, 0)  # L = 59.8 -> 60, as for the colour PNG above
    rgb[0, 1] = (0, 200, 0)
    rgb[1, 2] = (10, 20, 250)
    path = _write_dicom(tmp_path / "rgb.dcm", rgb, bits_stored=8, photometric="RGB", samples=3)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    pixels, info = read_image_with_info(path)
    assert pixels[0, 0] == 60 and pixels[0, 1] == 117
    np.testing.assert_array_equal(pixels, _luma(rgb))
    np.testing.assert_array_equal(pixels, read_image(tmp_path / "rgb.png"))
    assert info == ImageInfo("DICOM", "RGB", True)
    assert info.note == "colour DICOM (RGB) converted to grey (ITU-R 601-2 luma)"


def test_dicom_16_bit_rgb_maps_its_stored_range_then_luma(tmp_path: Path) -> None:
    rgb = np.zeros((1, 2, 3), np.uint16)
    rgb[0, 0] = (4095, 4095, 4095)
    rgb[0, 1] = (2048, 0, 0)  # 2048 * 255 / 4095 = 127.5 -> 128; luma 128 * 0.299 = 38.3 -> 38
    path = _write_dicom(tmp_path / "rgb12.dcm", rgb, bits_stored=12, photometric="RGB", samples=3)
    np.testing.assert_array_equal(read_image(path), [[255, 38]])


def test_dicom_palette_colour_uses_its_lookup_table(tmp_path: Path) -> None:
    lut = np.arange(256, dtype=np.uint16) * 257  # 16-bit entries: index i -> grey level i
    red = lut.copy()
    red[3] = 0  # index 3 is pure green and blue: (0, 771, 771) of 65535 -> (0, 3, 3) -> L 2
    descriptor = [256, 0, 16]
    path = _write_dicom(
        tmp_path / "palette.dcm",
        np.array([[0, 3], [128, 255]], np.uint8),
        bits_stored=8,
        photometric="PALETTE COLOR",
        extra={
            "RedPaletteColorLookupTableDescriptor": descriptor,
            "GreenPaletteColorLookupTableDescriptor": descriptor,
            "BluePaletteColorLookupTableDescriptor": descriptor,
            "RedPaletteColorLookupTableData": red.tobytes(),
            "GreenPaletteColorLookupTableData": lut.tobytes(),
            "BluePaletteColorLookupTableData": lut.tobytes(),
        },
    )
    pixels, info = read_image_with_info(path)
    np.testing.assert_array_equal(pixels, [[0, 2], [128, 255]])
    assert info.converted_from_colour and info.mode == "PALETTE COLOR"


def test_grey_files_report_no_colour_conversion(tmp_path: Path) -> None:
    grey = _write_dicom(tmp_path / "g.dcm", np.zeros((2, 2), np.uint8), bits_stored=8)
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "g.png")
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "c.png")
    assert read_image_with_info(grey)[1] == ImageInfo("DICOM", "MONOCHROME2", False)
    assert read_image_with_info(tmp_path / "g.png")[1] == ImageInfo("PNG", "L", False)
    assert read_image_with_info(tmp_path / "g.png")[1].note is None
    assert read_image_with_info(tmp_path / "c.png")[1] == ImageInfo("PNG", "RGB", True)


def test_dicom_rgb_header_with_one_sample_is_refused(tmp_path: Path) -> None:
    path = _write_dicom(tmp_path / "rgb1.dcm", np.zeros((2, 2), np.uint8), bits_stored=8, photometric="RGB")
    with pytest.raises(ImageReadError, match=r"rgb1\.dcm: colour DICOM .*'RGB'.*SamplesPerPixel 1"):
        read_image(path)


def test_dicom_unknown_or_missing_photometric_is_named(tmp_path: Path) -> None:
    path = _write_dicom(
        tmp_path / "hsv.dcm", np.zeros((2, 2, 3), np.uint8), bits_stored=8, photometric="HSV", samples=3
    )
    with pytest.raises(ImageReadError, match=r"hsv\.dcm: unsupported PhotometricInterpretation 'HSV'"):
        read_image(path)
    path = _write_dicom(tmp_path / "none.dcm", np.zeros((2, 2), np.uint8), bits_stored=8, photometric="")
    with pytest.raises(ImageReadError, match=r"none\.dcm: .*no \(0028,0004\) PhotometricInterpretation"):
        read_image(path)


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")
def test_dicom_malformed_number_names_the_tag(tmp_path: Path) -> None:
    path = _write_dicom(tmp_path / "bad.dcm", np.zeros((2, 2), np.uint8), bits_stored=8, extra={"NumberOfFrames": 12})
    data = path.read_bytes()
    element = b"\x28\x00\x08\x00IS\x02\x0012"  # (0028,0008) NumberOfFrames = "12"
    assert data.count(element) == 1
    path.write_bytes(data.replace(element, element[:-2] + b"1A"))
    with pytest.raises(ImageReadError, match=r"bad\.dcm: .*\(0028,0008\) NumberOfFrames holds '1A'"):
        read_image(path)


def test_dicom_multiframe_rejected(tmp_path: Path) -> None:
    path = _write_dicom(tmp_path / "mf.dcm", np.zeros((3, 2, 2), np.uint8), bits_stored=8, frames=3)
    with pytest.raises(ImageReadError, match=r"mf\.dcm: multi-frame DICOM \(3 frames\)"):
        read_image(path)


def test_real_jpeg_baseline_dicoms() -> None:
    import pydicom

    original = read_image(REAL_DICOM)
    inverted = read_image(FAKE_MONO1)
    assert original.shape == (1024, 1024) and original.dtype == np.uint8
    np.testing.assert_array_equal(original, pydicom.dcmread(REAL_DICOM).pixel_array)
    np.testing.assert_array_equal(inverted, 255 - original)
    # bright bones of the MONOCHROME2 original become dark in the MONOCHROME1 copy
    bright = original > 200
    assert bright.any() and (inverted[bright] < 55).all()


# --- masks -------------------------------------------------------------------------------------


def test_read_mask_binarises_any_nonzero(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 255, 1]], dtype=np.uint8)).save(tmp_path / "m.png")
    out = read_mask(tmp_path / "m.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 1, 1]])


def test_read_mask_palette_and_alpha(tmp_path: Path) -> None:
    image = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), mode="P")
    image.putpalette([0, 0, 0, 0, 0, 1] + [0] * (3 * 254))  # index 1 is (0, 0, 1): L == 0
    image.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), [[0, 1]])
    rgba = np.array([[[255, 0, 0, 0], [0, 9, 0, 255], [0, 0, 0, 255]]], dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "a.png"), [[0, 1, 0]])


def test_read_mask_dicom(tmp_path: Path) -> None:
    path = _write_dicom(tmp_path / "mask.dcm", np.array([[0, 3], [1, 0]], np.uint8), bits_stored=8)
    np.testing.assert_array_equal(read_mask(path), [[0, 1], [1, 0]])


def test_real_mask_matches_its_image() -> None:
    name = "covid_ARDSSevere.png"
    mask = read_mask(ASSETS / "masks" / "gb_airways" / name)
    image = read_image(ASSETS / "images" / name)
    assert mask.shape == image.shape
    assert set(np.unique(mask).tolist()) == {0, 1}
