"""`read_image_bytes`: an upload decodes through the file reader's code to the same pixels;
`read_dicom_header`: the one DICOM header reader, whose facts are the steps the reader applies.

(Both live in ``maco_cxr.data.io``; their tests sit here, next to the viewer that needs them.)
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image

from maco_cxr.data.io import read_dicom_header, read_image, read_image_bytes
from maco_cxr.errors import ImageReadError
from tests.serve.conftest import ASSETS, DICOM_MONO1, DICOM_MONO2

FILES = [DICOM_MONO1, DICOM_MONO2, *sorted((ASSETS / "images").glob("*.png"))[:6]]
# truncated DICOMs make pydicom warn (naming "upload.dcm"); that is expected here
pytestmark = pytest.mark.filterwarnings("ignore:End of file reached before delimiter:UserWarning")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name[:32])
def test_bytes_decode_to_the_pixels_of_the_file(path):
    np.testing.assert_array_equal(read_image_bytes(path.read_bytes(), path.name), read_image(path))


def test_dicom_is_recognised_by_its_magic_without_a_suffix():
    pixels = read_image_bytes(DICOM_MONO1.read_bytes(), "upload")
    np.testing.assert_array_equal(pixels, read_image(DICOM_MONO1))


def test_jpeg_with_exif_orientation_and_colour_decode_as_from_a_file(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:, :10] = (200, 30, 30)
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "x.jpg"
    image.save(path, format="JPEG", exif=exif.tobytes(), quality=95)
    pixels = read_image_bytes(path.read_bytes(), "x.jpg")
    assert pixels.shape == (30, 20)
    np.testing.assert_array_equal(pixels, read_image(path))


@pytest.mark.parametrize(
    ("data", "name", "words"),
    [
        (b"", "upload.png", "upload.png: cannot decode the image"),
        (b"GIF89a broken", "upload.gif", "upload.gif: cannot decode"),
        (DICOM_MONO2.read_bytes()[:4000], "upload.dcm", "upload.dcm: the PixelData element could not be read"),
    ],
)
def test_errors_name_the_given_name(data, name, words):
    with pytest.raises(ImageReadError, match=words):
        read_image_bytes(data, name)


def test_a_dicom_without_pixels_is_explained():
    dataset = pydicom.dcmread(DICOM_MONO2)
    del dataset.PixelData
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    with pytest.raises(ImageReadError, match="has no pixel data"):
        read_image_bytes(buffer.getvalue(), "upload.dcm")


# ----------------------------------------------------------------------------- read_dicom_header


def _dicom_bytes(**elements) -> bytes:
    """DICOM_MONO2 (8-bit MONOCHROME2, no LUT, no window) with ``elements`` set."""
    dataset = pydicom.dcmread(DICOM_MONO2)
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


def _voi_lut() -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.add_new(0x00283002, "US", [256, 0, 8])  # LUT Descriptor: 256 entries from 0, 8 bit
    item.add_new(0x00283006, "US", [min(255, 2 * v) for v in range(256)])  # LUT Data: doubles, clips
    return item


def test_header_of_a_file_and_of_its_bytes_agree_with_pydicom():
    keys = ("SOPInstanceUID", "StudyInstanceUID", "ViewPosition")
    header = read_dicom_header(DICOM_MONO2, identifiers=keys)
    assert header == read_dicom_header(DICOM_MONO2.read_bytes(), name="upload.dcm", identifiers=keys)
    raw = pydicom.dcmread(DICOM_MONO2, stop_before_pixels=True)
    assert header.identifiers == {key: str(raw[key].value) for key in keys}
    assert header.identifiers["ViewPosition"] == "PA"
    assert (header.rows, header.columns, header.frames) == (1024, 1024, 1)
    assert (header.modality, header.photometric, header.bits_stored) == ("CR", "MONOCHROME2", 8)
    assert header.pixel_count == read_image(DICOM_MONO2).size == 1024 * 1024
    assert (header.modality_lut, header.voi, header.window) == (
        "none (stored values)",
        "none: the full output range maps to 0..255",
        None,
    )
    assert not header.inverted and not header.is_dicomdir
    assert read_dicom_header(DICOM_MONO1).inverted


def test_no_identifier_is_read_unless_asked_for():
    assert read_dicom_header(DICOM_MONO2).identifiers == {}
    absent = read_dicom_header(DICOM_MONO2, identifiers=("PatientComments",))
    assert absent.identifiers == {"PatientComments": ""}


def test_only_dicom_has_a_header_by_the_readers_rule():
    png = FILES[2]
    assert read_dicom_header(png) is None
    assert read_dicom_header(png.read_bytes(), name="upload.png") is None
    assert read_dicom_header(DICOM_MONO1.read_bytes(), name="upload").photometric == "MONOCHROME1"  # magic
    with pytest.raises(TypeError, match="name="):
        read_dicom_header(DICOM_MONO1.read_bytes())


def test_a_dicomdir_is_recognised():
    dataset = pydicom.dcmread(DICOM_MONO2, stop_before_pixels=True)
    dataset.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    assert read_dicom_header(buffer.getvalue(), name="DICOMDIR.dcm").is_dicomdir


def test_a_window_is_reported_as_its_first_values():
    two = _dicom_bytes(WindowCenter=[100, 50], WindowWidth=[120, 60])
    header = read_dicom_header(two, name="w.dcm")
    assert (header.window, header.voi) == ((100.0, 120.0), "window center 100, width 120")
    np.testing.assert_array_equal(
        read_image_bytes(two, "w.dcm"), read_image_bytes(_dicom_bytes(WindowCenter=100, WindowWidth=120), "w.dcm")
    )


def test_a_voi_lut_is_reported_and_applied_over_a_window():
    both = _dicom_bytes(VOILUTSequence=[_voi_lut()], WindowCenter=10, WindowWidth=5)
    header = read_dicom_header(both, name="lut.dcm")
    assert (header.voi, header.window) == ("VOI LUT (first)", None)
    plain = read_image(DICOM_MONO2).astype(np.int64)
    np.testing.assert_array_equal(
        read_image_bytes(both, "lut.dcm"), read_image_bytes(_dicom_bytes(VOILUTSequence=[_voi_lut()]), "lut.dcm")
    )
    np.testing.assert_array_equal(read_image_bytes(both, "lut.dcm"), np.minimum(255, 2 * plain))


def test_a_rescale_is_reported_and_applied():
    inverted = _dicom_bytes(RescaleSlope=-1, RescaleIntercept=255)
    assert read_dicom_header(inverted, name="r.dcm").modality_lut == "rescale slope -1, intercept 255"
    np.testing.assert_array_equal(read_image_bytes(inverted, "r.dcm"), 255 - read_image(DICOM_MONO2))


def test_colour_reports_no_lut_steps():
    header = read_dicom_header(
        _dicom_bytes(PhotometricInterpretation="RGB", SamplesPerPixel=3, RescaleSlope=2, RescaleIntercept=0),
        name="c.dcm",
    )
    assert header.modality_lut == "none (colour: no LUT steps)" and header.voi.startswith("none: colour")
    assert header.window is None and not header.inverted


def test_a_malformed_element_the_facts_need_is_named():
    dataset = pydicom.dcmread(DICOM_MONO2)
    dataset.add_new(0x00281050, "LO", "abc")  # WindowCenter, not a number
    dataset.add_new(0x00281051, "LO", "12")
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    with pytest.raises(ImageReadError, match=r"upload.dcm: .*\(0028,1050\) WindowCenter holds 'abc'"):
        read_dicom_header(buffer.getvalue(), name="upload.dcm")
    from maco_cxr.serve.uploads import UploadError, decode_upload

    with pytest.raises(UploadError, match="WindowCenter holds 'abc'") as refused:
        decode_upload(buffer.getvalue(), ".dcm", max_pixels=10**8)
    assert refused.value.status == 400


def test_the_viewer_shows_the_headers_facts_and_nothing_else():
    from maco_cxr.serve.uploads import decode_upload

    data = _dicom_bytes(WindowCenter=100, WindowWidth=120)
    assert decode_upload(data, ".dcm", max_pixels=10**8).dicom == {
        "modality": "CR",
        "photometric": "MONOCHROME2",
        "bits_stored": 8,
        "modality_lut": "none (stored values)",
        "voi": "window center 100, width 120",
        "window": {"center": 100.0, "width": 120.0},
        "inverted": False,
    }
