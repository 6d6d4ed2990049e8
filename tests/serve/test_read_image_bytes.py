"""`read_image_bytes`: an upload decodes through the file reader's code to the same pixels.

(It lives in ``maco_cxr.data.io``; its tests sit here, next to the viewer that needs it.)
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image

from maco_cxr.data.io import read_image, read_image_bytes
from maco_cxr.errors import ImageReadError
from tests.serve.conftest import ASSETS, DICOM_MONO1, DICOM_MONO2

FILES = [DICOM_MONO1, DICOM_MONO2, *sorted((ASSETS / "images").glob("*.png"))[:6]]
# truncated DICOMs make pydicom warn (naming "upload.dcm"); that is expected here
pytestmark = pytest.mark.filterwarnings("ignore:End of file reached before delimiter:UserWarning")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name[:32])
def test_bytes_decode_to_the_pixels_of_the_file(path):
    np.testing.assert_array_equal(read_image_bytes(path.read_bytes(), path.name), read_image(path))


def test_dicom_is_recognised_by_its_magic_without_a_suffix():
    np.testing.assert_array_equal(read_image_bytes(DICOM_MONO1.read_bytes(), "upload"), read_image(DICOM_MONO1))


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


@pytest.mark.parametrize(("data", "name", "words"), [
    (b"", "upload.png", "upload.png: cannot decode the image"),
    (b"GIF89a broken", "upload.gif", "upload.gif: cannot decode"),
    (DICOM_MONO2.read_bytes()[:4000], "upload.dcm", "upload.dcm: the PixelData element could not be read"),
])
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
