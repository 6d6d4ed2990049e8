"""Make the MRM fixture by running MRM's own fine-tuning code on a tiny random ViT.

Usage (in a venv that has timm 0.4.12, ml_collections, pandas and opencv beside torch; see README.md):

    python make_fixture.py /path/to/MRM-pytorch-checkout

The checkout needs ``NIH_ChestX-ray/`` and ``util/`` of github.com/RL4M/MRM-pytorch. Their ``train.py``
``setup`` builds and loads the model, their ``utils/data_utils.get_loader`` (stage "test") reads and
transforms the images, and their ``models_vit.VisionTransformer.forward_features`` gives the features.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import types
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
IMAGES = HERE.parents[1] / "cxr-real" / "images"
NAMES = (
    "covid_58cb9263f16e94305c730685358e4e_jumbo.png",
    "covid_ARDSSevere.png",
    "covid_covid-19-pneumonia-15-PA.png",
)
TINY = dict(patch_size=16, embed_dim=48, depth=2, num_heads=12, mlp_ratio=4, qkv_bias=True)


def stub_training_only_imports() -> None:
    """train.py imports apex (fp16 training) and tensorboard at module level; neither is used by
    ``setup`` or the test loader, so empty stand-ins let the module import."""
    apex = types.ModuleType("apex")
    apex.amp = types.SimpleNamespace()
    parallel = types.ModuleType("apex.parallel")
    parallel.DistributedDataParallel = object
    apex.parallel = parallel
    board = types.ModuleType("torch.utils.tensorboard")
    board.SummaryWriter = object
    sys.modules.update({"apex": apex, "apex.parallel": parallel, "torch.utils.tensorboard": board})


def restore_numpy_float_alias() -> None:
    """util/pos_embed.py uses ``np.float``, the alias of ``float`` that NumPy 1.24 removed; put it back."""
    if not hasattr(np, "float"):
        np.float = float


def randomise(model: nn.Module, generator: torch.Generator) -> None:
    """Every tensor random (LayerNorm weights around 1), so a wrongly loaded tensor shows."""
    for name, tensor in model.state_dict().items():
        if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name.endswith("norm.weight"):
            tensor.copy_(1 + 0.2 * torch.randn(tensor.shape, generator=generator))
        else:
            tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))


def pretraining_checkpoint(models_vit, pos_embed, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """MRM.pth's layout (model_mrm.py MRM): the encoder (patch_embed, cls_token, fixed sin-cos
    pos_embed, blocks, norm) plus decoder and BERT tensors that fine-tuning ignores."""
    encoder = models_vit.VisionTransformer(global_pool=False, norm_layer=partial(nn.LayerNorm, eps=1e-6), **TINY)
    randomise(encoder, generator)
    grid = encoder.patch_embed.grid_size[0]
    table = pos_embed.get_2d_sincos_pos_embed(TINY["embed_dim"], grid, cls_token=True)
    state = {k: v.clone() for k, v in encoder.state_dict().items() if not k.startswith("head.")}
    state["pos_embed"] = torch.from_numpy(table).float()[None]
    decoder_dim = 8
    extras = {
        "mask_token": (1, 1, decoder_dim),
        "decoder_pos_embed": (1, grid * grid + 1, decoder_dim),
        "decoder_embed.weight": (decoder_dim, TINY["embed_dim"]),
        "decoder_embed.bias": (decoder_dim,),
        "decoder_blocks.0.norm1.weight": (decoder_dim,),
        "decoder_blocks.0.attn.qkv.weight": (3 * decoder_dim, decoder_dim),
        "decoder_norm.weight": (decoder_dim,),
        "decoder_pred.weight": ((2 * TINY["patch_size"]) ** 2 * 3, decoder_dim),
        "bert_mlp.weight": (384, TINY["embed_dim"]),
        "bert_mlp.bias": (384,),
        "bert_encoder.model.bert.embeddings.word_embeddings.weight": (16, 384),
    }
    state.update({k: torch.randn(shape, generator=generator) for k, shape in extras.items()})
    return state


def their_setup(train, pretrained: Path, stage: str):
    """Their train.py ``setup``: models_vit with global_pool=True, the checkpoint loaded as they
    load it (stage "train": strict=False and their missing-keys assert; "test": load_weights)."""
    args = argparse.Namespace(
        model_type="ViT-B_16",
        model="vit_tiny_fixture",
        stage=stage,
        pretrained_path=str(pretrained),
        device=torch.device("cpu"),
        num_classes=14,
    )
    torch.manual_seed(0)
    _, model = train.setup(args)
    return model.eval()


def their_test_loader(data_utils, root: Path, img_size: int):
    args = argparse.Namespace(
        local_rank=-1, stage="test", dataset_path=str(root), data_volume="1", img_size=img_size, eval_batch_size=8
    )
    return data_utils.get_loader(args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path, help="an MRM-pytorch checkout (with NIH_ChestX-ray/ and util/)")
    repo = parser.parse_args().repo.resolve()
    sys.path[:0] = [str(repo / "NIH_ChestX-ray"), str(repo)]
    stub_training_only_imports()
    restore_numpy_float_alias()
    import models_vit
    import train
    from util import pos_embed
    from utils import data_utils

    models_vit.vit_tiny_fixture = lambda **kw: models_vit.VisionTransformer(
        norm_layer=partial(nn.LayerNorm, eps=1e-6), **TINY, **kw
    )
    generator = torch.Generator().manual_seed(20230221)
    out: dict[str, np.ndarray] = {"images": np.array(NAMES)}

    pretrained = HERE / "MRM.pth"
    torch.save({"model": pretraining_checkpoint(models_vit, pos_embed, generator)}, pretrained)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "test" / "all_classes").mkdir(parents=True)
        for name in NAMES:
            shutil.copy(IMAGES / name, root / "test" / "all_classes" / name)
        (root / "test_list.txt").write_text("".join(f"{name} {' '.join(['0'] * 14)}\n" for name in NAMES))

        x = torch.cat([batch[0] for batch in their_test_loader(data_utils, root, 224)])
        assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2]), "Grayscale(3) channels differ"
        pixels = (x[:, 0] * 0.2449 + 0.4978) * 255
        assert (pixels - pixels.round()).abs().max() < 1e-3
        out["crops"] = pixels.round().to(torch.uint8).numpy()

        model = their_setup(train, pretrained, "train")
        with torch.no_grad():
            out["features"] = model.forward_features(x).numpy()

        # a fine-tuned file as their save_model_auc writes it: the model's plain state dict, fc_norm trained
        with torch.no_grad():
            model.fc_norm.weight.copy_(1 + 0.3 * torch.randn(model.fc_norm.weight.shape, generator=generator))
            model.fc_norm.bias.copy_(0.3 * torch.randn(model.fc_norm.bias.shape, generator=generator))
        finetuned = HERE / "mrm_finetuned.bin"
        torch.save(model.state_dict(), finetuned)
        tuned = their_setup(train, finetuned, "test")
        with torch.no_grad():
            out["finetuned_features"] = tuned.forward_features(x).numpy()

        # a larger input: MAE/MRM's interpolate_pos_embed on the checkpoint, their transforms at 256
        x256 = torch.cat([batch[0] for batch in their_test_loader(data_utils, root, 256)])
        big = models_vit.vit_tiny_fixture(num_classes=14, drop_path_rate=0.1, global_pool=True, img_size=256)
        state = torch.load(pretrained, map_location="cpu")["model"]
        pos_embed.interpolate_pos_embed(big, state)
        message = big.load_state_dict(state, strict=False)
        assert set(message.missing_keys) == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
        with torch.no_grad():
            out["features_256"] = big.eval().forward_features(x256).numpy()

    np.savez_compressed(HERE / "expected.npz", **out)
    print({k: v.shape for k, v in out.items()})


if __name__ == "__main__":
    main()
