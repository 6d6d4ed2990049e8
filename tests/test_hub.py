from __future__ import annotations

import json
import os
import stat

import pytest
import torch

import maco_cxr
from maco_cxr.cli import main
from maco_cxr.errors import CheckpointError
from maco_cxr.hub import (
    convert_official_state_dict,
    create_model,
    infer_config,
    load,
    load_mae_weights,
    load_official,
    save_pretrained,
)
from maco_cxr.models.config import preset
from maco_cxr.models.maco import MacoModel


def test_top_level_load_reads_official_checkpoint(official_fixture_dir):
    model = maco_cxr.load(official_fixture_dir / "maco.pth", text_heads=2, vision_heads=4, decoder_heads=2)
    assert isinstance(model, maco_cxr.MacoModel) and not model.training


def test_convert_cli_then_load_gives_identical_embeddings(official_fixture_dir, tmp_path, capsys):
    out = tmp_path / "converted"
    assert (
        main(
            [
                "convert",
                "--official",
                str(official_fixture_dir / "maco.pth"),
                "--out",
                str(out),
                "--text-heads",
                "2",
                "--vision-heads",
                "4",
                "--decoder-heads",
                "2",
            ]
        )
        == 0
    )
    assert "94 tensors loaded" in capsys.readouterr().out
    meta = json.loads((out / "config.json").read_text())
    assert meta["preprocessing"]["mean"] == pytest.approx(0.4978) and meta["model"]["text"]["num_heads"] == 2
    original, _ = load_official(official_fixture_dir / "maco.pth", text_heads=2, vision_heads=4, decoder_heads=2)
    converted = load(out)
    images = torch.randint(0, 256, (2, 224, 224), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(converted.encode_images(images), original.encode_images(images))
        torch.testing.assert_close(converted.encode_texts(["no effusion."]), original.encode_texts(["no effusion."]))


def test_infer_config_defaults_follow_the_released_model():
    model = create_model(preset("base"))
    official = {}
    for key, value in model.state_dict().items():
        official[key] = value
    config = infer_config(official)
    assert config.vision.num_heads == 12 and config.decoder.num_heads == 6 and config.text.num_heads == 12
    assert config.vision == model.config.vision and config.decoder == model.config.decoder
    assert config.super_resolution


def test_official_conversion_drops_only_unused_tensors(official_fixture_dir):
    raw = torch.load(official_fixture_dir / "maco.pth", weights_only=True)["model"]
    converted, ignored = convert_official_state_dict({f"module.{k}": v for k, v in raw.items()})
    assert "inverse_temperature" in converted and "decoder.mask_token" in converted
    assert "visual.pos_embed" in converted and "decoder.pos_embed" in converted
    assert sorted(ignored) == sorted(
        k
        for k in raw
        if k.startswith(
            (
                "pos_weight_text",
                "pos_cat",
                "logit_scale",
                "WCE",
                "bert_encoder.model.cls",
                "bert_encoder.model.bert.embeddings.position_ids",
            )
        )
    )


def test_missing_tensor_is_an_error_unless_not_strict(official_fixture_dir, tmp_path):
    raw = torch.load(official_fixture_dir / "maco.pth", weights_only=True)["model"]
    del raw["blocks.1.attn.qkv.weight"]
    torch.save({"model": raw}, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"visual\.blocks\.1\.attn\.qkv\.weight"):
        load_official(tmp_path / "broken.pth", text_heads=2, vision_heads=4, decoder_heads=2)
    _, report = load_official(tmp_path / "broken.pth", text_heads=2, vision_heads=4, decoder_heads=2, strict=False)
    assert report.missing == ["visual.blocks.1.attn.qkv.weight"]


def test_unreadable_and_foreign_files_are_clear_errors(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load(tmp_path / "junk.pth")
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not an official MaCo checkpoint"):
        load(tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="no such file"):
        load(tmp_path / "absent")


def test_mae_weights_initialise_the_encoder_and_report_the_rest(tmp_path):
    donor = create_model(preset("tiny"))
    mae = {k.removeprefix("visual."): v.clone() for k, v in donor.state_dict().items() if k.startswith("visual.")}
    mae["decoder_embed.weight"] = torch.zeros(512, 128)  # MAE decoder width differs: must be ignored
    mae["head.weight"] = torch.zeros(10, 128)
    torch.save({"model": mae}, tmp_path / "mae.pth")
    model = create_model(preset("tiny"))
    report = load_mae_weights(model, tmp_path / "mae.pth")
    assert torch.equal(model.visual.blocks[3].mlp.fc2.weight, donor.visual.blocks[3].mlp.fc2.weight)
    assert not report.missing
    assert any(k.startswith("decoder.embed.weight") for k in report.ignored) and "head.weight" in report.ignored
    assert "ignored" in report.summary()


def test_save_is_atomic_and_replaces_existing(tmp_path):
    model = create_model(preset("tiny"))
    save_pretrained(model, tmp_path / "m")
    save_pretrained(model, tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        ".maco-cxr.json",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_saved_models_get_the_modes_of_the_umask(tmp_path, umask):
    """mkdtemp (0700) and safetensors (0600) must not make a model private to its creator."""
    model = create_model(preset("tiny"))
    old = os.umask(umask)
    try:
        save_pretrained(model, tmp_path / "m")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o777 & ~umask
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert stat.S_IMODE((tmp_path / "m" / name).stat().st_mode) == 0o666 & ~umask, name


def test_tokenizer_train_cli_builds_a_compatible_vocabulary(tmp_path, capsys):
    reports = tmp_path / "reports"
    reports.mkdir()
    for i, text in enumerate(
        ["Small left pleural effusion.", "No pneumothorax. Heart size normal.", "Right lower lobe consolidation."] * 5
    ):
        (reports / f"s{i}.txt").write_text(text)
    assert (
        main(
            [
                "tokenizer",
                "train",
                str(reports),
                "--out",
                str(tmp_path / "tok.json"),
                "--vocab-size",
                "200",
                "--min-frequency",
                "1",
            ]
        )
        == 0
    )
    from maco_cxr.data.tokenizer import ReportTokenizer

    tokenizer = ReportTokenizer.from_file(tmp_path / "tok.json")
    ids = tokenizer(["Left pleural effusion."])["input_ids"][0]
    assert ids[0] == 2 and tokenizer.tokenizer.token_to_id("effusion") is not None
    assert tokenizer.tokenizer.id_to_token(int(ids[1])) == "left"
    assert ids.shape == (100,) and int((ids != 0).sum()) == 5


def test_every_public_name_resolves():
    for name in maco_cxr.__all__:
        assert getattr(maco_cxr, name) is not None, name


def test_predict_folder_is_the_predict_command():
    from maco_cxr.tasks.predict import predict

    assert maco_cxr.predict_folder is predict


# ------------------------------------------------------------------------ SHA-256 checks


def _sha256(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_file_sha256_streams_chunks_to_the_known_digest(tmp_path):
    from maco_cxr.hub import file_sha256

    (tmp_path / "abc").write_bytes(b"abc")
    known = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2 example
    assert file_sha256(tmp_path / "abc") == file_sha256(tmp_path / "abc", chunk_size=1) == known


def test_load_checks_the_sha256_of_an_official_file(official_fixture_dir):
    path = official_fixture_dir / "maco.pth"
    digest = _sha256(path)
    assert load(path, sha256=digest.upper()).config.text.num_heads == 2
    assert load(path, sha256=f"sha256:{digest}") is not None
    with pytest.raises(CheckpointError, match=rf"maco\.pth: SHA-256 mismatch: expected {'0' * 64}, got {digest}"):
        load(path, sha256="0" * 64)
    with pytest.raises(CheckpointError, match="not a SHA-256 digest"):
        load(path, sha256="abc123")


def test_load_checks_the_sha256_of_a_directorys_weights(tmp_path):
    save_pretrained(create_model(preset("tiny")), tmp_path / "m")
    digest = _sha256(tmp_path / "m" / "model.safetensors")
    assert isinstance(load(tmp_path / "m", sha256=digest), MacoModel)
    assert isinstance(load(tmp_path / "m" / "model.safetensors", sha256=digest), MacoModel)
    with pytest.raises(CheckpointError, match=r"m/model\.safetensors: SHA-256 mismatch"):
        load(tmp_path / "m", sha256="f" * 64)


def test_convert_prints_and_checks_the_sha256(official_fixture_dir, tmp_path, capsys):
    import warnings

    from maco_cxr.hub import HeadCountWarning

    source = official_fixture_dir / "maco.pth"
    digest = _sha256(source)
    with warnings.catch_warnings():
        warnings.simplefilter("error", HeadCountWarning)
        assert main(["convert", "--official", str(source), "--out", str(tmp_path / "ok"), "--sha256", digest]) == 0
    out = capsys.readouterr().out
    assert f"sha256 {digest}  {source} (matches --sha256)" in out
    assert "recognised as official-maco-tiny" in out and "BERT 64x2 (2 heads)" in out
    meta = json.loads((tmp_path / "ok" / "config.json").read_text())
    assert meta["converted_from"] == {
        "file": "maco.pth",
        "sha256": digest,
        "format": "official",
        "known_checkpoint": "official-maco-tiny",
        "training_data": "none: random weights (a test fixture)",
    }
    assert meta["model"]["vision"]["num_heads"] == 4 and meta["model"]["decoder"]["num_heads"] == 2
    assert main(["convert", "--official", str(source), "--out", str(tmp_path / "bad"), "--sha256", "1" * 64]) == 2
    assert f"SHA-256 mismatch: expected {'1' * 64}, got {digest}" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
