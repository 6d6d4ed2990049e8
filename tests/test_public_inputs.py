"""Every public function that takes one or many images or paths takes a single ``str`` or
``Path`` as ONE input (never its characters), equal to the same path in a list; a lone
``[3, H, W]`` tensor (torchvision's RGB layout) is refused with a message that says how to
pass RGB."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import maco_cxr
from maco_cxr.data.inputs import as_path_list, image_report_pairs, load_images
from maco_cxr.errors import DataError
from maco_cxr.hub import create_model, save_pretrained
from maco_cxr.models.config import preset
from tests.tiny_finetuned import save_tiny_detector, save_tiny_segmenter


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model(preset("tiny")).eval()


@pytest.fixture(scope="module")
def image(tmp_path_factory, cxr_real_dir) -> Path:
    folder = tmp_path_factory.mktemp("images") / "one"
    folder.mkdir()
    source = min((cxr_real_dir / "images").glob("*.png"), key=lambda p: p.stat().st_size)
    return Path(shutil.copy(source, folder / "a.png"))


def _forms(path: Path) -> dict[str, object]:
    return {"str": str(path), "Path": path, "list": [path]}


def test_the_helper_reads_one_path_as_one() -> None:
    assert as_path_list("/data/x", "inputs") == ["/data/x"]
    assert as_path_list(Path("/data/x"), "inputs") == [Path("/data/x")]
    assert as_path_list(("a", Path("b")), "inputs") == ["a", Path("b")]
    assert as_path_list((p for p in ["a"]), "inputs") == ["a"]
    with pytest.raises(DataError, match=r"inputs\[1\]: expected a path \(str or os.PathLike\); got int"):
        as_path_list(["a", 3], "inputs")
    with pytest.raises(DataError, match="inputs: expected a path .* got bytes"):
        as_path_list(b"/data/x", "inputs")


@pytest.mark.parametrize("name", ["zero_shot", "ground", "encode_images", "patch_embeddings", "similarity"])
def test_model_functions_take_a_str_a_path_or_a_list(model, image, name) -> None:
    call = {
        "zero_shot": lambda x: maco_cxr.zero_shot(model, x, ["Edema", "Pneumothorax"]),
        "ground": lambda x: maco_cxr.ground(model, x, "left pleural effusion"),
        "encode_images": lambda x: maco_cxr.encode_images(model, x),
        "patch_embeddings": lambda x: maco_cxr.patch_embeddings(model, x),
        "similarity": lambda x: maco_cxr.similarity(model, x, ["edema"]),
    }[name]
    results = {form: call(value) for form, value in _forms(image).items()}
    many = results.pop("list")
    expected = many[0] if name == "ground" else many  # ground gives one map per image of a list
    for form, result in results.items():
        np.testing.assert_array_equal(np.asarray(result), np.asarray(expected), err_msg=form)
    height, width = maco_cxr.read_image(image).shape
    assert {
        "zero_shot": (1, 2),
        "ground": (height, width),
        "encode_images": (1, model.config.embed_dim),
        "patch_embeddings": (1, 14, 14, model.config.embed_dim),
        "similarity": (1, 1),
    }[name] == tuple(results["str"].shape)


def test_read_image_takes_a_str_or_a_path(image) -> None:
    np.testing.assert_array_equal(maco_cxr.read_image(str(image)), maco_cxr.read_image(image))
    assert maco_cxr.read_image(image).shape == np.asarray(Image.open(image)).shape


@pytest.mark.parametrize("save", [save_tiny_segmenter, save_tiny_detector], ids=["segmenter", "detector"])
def test_a_fine_tuned_model_takes_a_str_a_path_or_a_list(save, image, tmp_path) -> None:
    save(tmp_path / "best")
    tuned = maco_cxr.load_finetuned(tmp_path / "best")
    results = {form: tuned.predict(value) for form, value in _forms(image).items()}
    assert isinstance(results["list"], list) and len(results["list"]) == 1
    for form in ("str", "Path"):
        one, listed = results[form], results["list"][0]
        if isinstance(one, dict):  # detector: boxes, scores, labels
            assert one.keys() == listed.keys()
            for key in one:
                np.testing.assert_array_equal(np.asarray(one[key]), np.asarray(listed[key]), err_msg=form)
        else:
            np.testing.assert_array_equal(np.asarray(one), np.asarray(listed), err_msg=form)


def test_predict_folder_takes_one_folder_as_a_str_a_path_or_a_list(model, image, tmp_path) -> None:
    save_pretrained(model, tmp_path / "m")
    tables = set()
    for form, value in _forms(image.parent).items():
        result = maco_cxr.predict_folder(tmp_path / "m", value, tmp_path / form, classes=["Edema"])
        assert (result.n_inputs, result.n_predicted) == (1, 1), form
        assert result.summary["settings"]["inputs"] == [str(image.parent)]
        tables.add((result.out / "predictions.csv").read_text())
    assert len(tables) == 1 and str(image) in tables.pop()
    single = maco_cxr.predict_folder(tmp_path / "m", str(image), tmp_path / "file", classes=["Edema"])
    assert single.n_predicted == 1


def test_retrieve_takes_one_pair_or_many_and_names_a_lone_path(model, image) -> None:
    pairs = [(image, "left pleural effusion."), (str(image), "no pneumothorax.")]
    many = maco_cxr.retrieve(model, pairs, ks=(1,))
    assert many["n"] == 2 and many["n_unique_reports"] == 2
    one = maco_cxr.retrieve(model, (image, "left pleural effusion."), ks=(1,))
    assert one["n"] == 1 and one["i2t_R@1"] == 1.0
    for lone in (str(image), image):
        with pytest.raises(DataError, match=r"retrieve: data: got one path .*give \(image, report\) pairs"):
            maco_cxr.retrieve(model, lone)
    with pytest.raises(
        DataError,
        match=r"retrieve: data\[1\]: expected an \(image, report text\) pair; got "
        "PosixPath",
    ):
        maco_cxr.retrieve(model, [(image, "edema."), image])
    assert image_report_pairs([[image, "a."]], "pairs") == [(image, "a.")]


def test_a_lone_3_h_w_tensor_is_refused_and_rgb_has_two_ways_in(model) -> None:
    rgb = np.zeros((48, 40, 3), np.uint8)
    rgb[..., 0] = 200  # pure red: luminance 60, as a colour PNG reads
    chw = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()  # torchvision's read_image layout
    with pytest.raises(
        DataError,
        match=r"shape \[3, 48, 40\] is ambiguous: one RGB image in torchvision's "
        r"\[C, H, W\] layout, or 3 grey images\. Pass one colour image as "
        r"image\[None\] \(\[1, 3, H, W\]\) or \[image\]",
    ):
        maco_cxr.zero_shot(model, chw, ["Edema"])
    for one_rgb in (chw[None], [chw]):
        (grey,) = load_images(one_rgb)
        assert grey.shape == (48, 40) and set(np.unique(grey)) == {60}
    assert [a.shape for a in load_images(chw[:, None])] == [(48, 40)] * 3  # three grey images
    assert len(load_images(torch.zeros(2, 48, 40, dtype=torch.uint8))) == 2  # other batch sizes stay batches
    assert len(load_images(np.zeros((3, 48, 40), np.uint8))) == 3  # numpy keeps the image libraries' layout
    assert maco_cxr.zero_shot(model, chw[None], ["Edema"]).shape == (1, 1)
