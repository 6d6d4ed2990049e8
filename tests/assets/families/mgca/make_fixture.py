"""Make the MGCA fidelity fixture by running MGCA's own code (github.com/HKU-MedAI/MGCA @ 680fe4a) on tiny random
models saved in its Lightning checkpoint layout.

    PYTHONPATH=/work/main/src /work/peers/mgca-venv/bin/python make_fixture.py /path/to/MGCA

(the MGCA git tree, whose ``mgca`` package is imported from there). See README.md for what is stubbed and why.
"""

from __future__ import annotations

import functools
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
REAL = HERE.parents[1] / "cxr-real"
IMAGES = (
    "images/covid_58cb9263f16e94305c730685358e4e_jumbo.png",  # 466 x 512: OpenCV's 2 x 2 area path
    "images/covid_ARDSSevere.png",  # 512 x 409: OpenCV's general area path
    "images/nih_00000001_000.png",  # 512 x 512
)
TEXTS = (
    "Opacity in the right lower lobe. No pneumothorax is seen.",
    "1. Small left pleural effusion.  2. Cardiomegaly, unchanged since prior study.",
    "Severe bilateral consolidation; endotracheal tube in place.",
)
CLASSES = {
    "pneumothorax": (
        ("there is pneumothorax", "small right pneumothorax"),
        ("there is no pneumothorax", "the lung is clear"),
    ),
    "effusion": (("left pleural effusion",), ("no pleural effusion", "no evidence of effusion")),
}
PHRASES = (
    ("right lower lobe opacity", "no pneumothorax is seen"),
    ("small left pleural effusion", "enlarged cardiac silhouette"),
)
GROUNDING_IMAGES = (IMAGES[1], IMAGES[0])
WORDS = sorted(
    {
        "opacity",
        "in",
        "the",
        "right",
        "lower",
        "lobe",
        "no",
        "is",
        "seen",
        "small",
        "left",
        "pleural",
        "effusion",
        "unchanged",
        "since",
        "prior",
        "study",
        "severe",
        "bilateral",
        "consolidation",
        "tube",
        "place",
        "there",
        "lung",
        "clear",
        "of",
        "evidence",
        "enlarged",
        "cardiac",
        "silhouette",
        "pneumo",
        "##thorax",
        "cardio",
        "##megaly",
        "endo",
        "##tracheal",
    }
)
VIT = {"embed_dim": 128, "depth": 1, "num_heads": 2, "mlp_ratio": 0.5}
BERT = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 1,
    "intermediate_size": 96,
    "max_position_embeddings": 64,
    "encoder_width": 16,
}
HEAD_HIDDEN, EMB_DIM, PROTOTYPES = 32, 16, 20
GROUND_SIZE = 224


def _stub_training_libraries() -> None:
    """Their module imports Lightning 1.5 (``plugins.DDPPlugin``), fairscale and a warm-up scheduler at the top; only
    ``LightningModule.save_hyperparameters`` and an ``AttributeDict`` of hyper-parameters are used by what runs here."""

    def module(name: str, **attrs: object) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
        return mod

    class AttributeDict(dict):
        def __getattr__(self, key: str) -> object:
            try:
                return self[key]
            except KeyError as err:
                raise AttributeError(key) from err

    AttributeDict.__module__ = "pytorch_lightning.utilities.parsing"
    AttributeDict.__qualname__ = "AttributeDict"

    class LightningModule(nn.Module):
        trainer = None

        def save_hyperparameters(self) -> None:
            import inspect

            frame = inspect.currentframe().f_back
            values = inspect.getargvalues(frame)
            hp = {k: values.locals[k] for k in values.args if k != "self"}
            hp.update(values.locals.get("kwargs", {}))
            self.hparams = AttributeDict(hp)

    dummy = type("Dummy", (), {"__init__": lambda self, *a, **k: None})
    module(
        "pytorch_lightning",
        LightningModule=LightningModule,
        LightningDataModule=object,
        Trainer=dummy,
        seed_everything=lambda *a, **k: None,
    )
    module("pytorch_lightning.utilities")
    module("pytorch_lightning.utilities.parsing", AttributeDict=AttributeDict)
    module("pytorch_lightning.callbacks", EarlyStopping=dummy, LearningRateMonitor=dummy, ModelCheckpoint=dummy)
    module("pytorch_lightning.loggers", WandbLogger=dummy)
    module("pytorch_lightning.plugins", DDP2Plugin=dummy, DDPPlugin=dummy)
    module("cosine_annealing_warmup", CosineAnnealingWarmupRestarts=dummy)
    module("fairscale")
    module("fairscale.nn")
    module("fairscale.nn.checkpoint")
    module("fairscale.nn.checkpoint.checkpoint_activations", checkpoint_wrapper=lambda m: m)


def _tokenizer_folder(folder: Path) -> Path:
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *letters, *(f"##{c}" for c in letters)]
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(str(folder))
    return folder


def _shrink(tokenizer_dir: Path) -> None:
    """Tiny sizes through their own constructors: their ViT class, torchvision's ResNet, med.py's BertModel."""
    import torchvision
    from mgca.models.backbones import cnn_backbones, encoder, vits
    from mgca.models.mgca import mgca_module
    from transformers import BertConfig, BertTokenizer

    def tiny_vit(name: str, image_size: int, *args: object) -> tuple[nn.Module, int]:
        return vits.VisionTransformer(img_size=image_size, patch_size=16, **VIT), VIT["embed_dim"]

    class Bottleneck1(torchvision.models.resnet.Bottleneck):
        expansion = 1

    def tiny_resnet(pretrained: bool = True) -> tuple[nn.Module, int, int]:
        model = torchvision.models.resnet.ResNet(Bottleneck1, [2, 1, 1, 1], width_per_group=4)
        model.fc = cnn_backbones.Identity()
        return model, 512, 256

    config = BertConfig.from_json_file(str(Path(encoder.BASE_DIR) / "../../configs/bert_config.json"))
    config.update({**BERT, "vocab_size": len((tokenizer_dir / "vocab.txt").read_text().split())})

    class TinyBert(encoder.BertModel):
        @classmethod
        def from_pretrained(cls, name: str, config: object, add_pooling_layer: bool) -> nn.Module:
            return cls(config, add_pooling_layer=add_pooling_layer)

    encoder.create_vit = tiny_vit
    cnn_backbones.resnet_50 = tiny_resnet
    encoder.BertConfig.from_json_file = staticmethod(lambda path: config)
    encoder.BertModel = TinyBert
    encoder.AutoTokenizer.from_pretrained = staticmethod(lambda name: BertTokenizer.from_pretrained(str(tokenizer_dir)))
    torch.hub.load_state_dict_from_url = lambda *a, **k: {"model": {}}  # their DeiT init (strict=False)
    mgca_module.ImageEncoder = functools.partial(encoder.ImageEncoder, hidden_dim=HEAD_HIDDEN)
    mgca_module.BertEncoder = functools.partial(
        encoder.BertEncoder, emb_dim=BERT["hidden_size"], hidden_dim=HEAD_HIDDEN
    )


def _randomise(model: nn.Module, seed: int) -> None:
    """Every float tensor random (seeded), BatchNorm running statistics included, so no default hides a bug."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=g)
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif (
                t.ndim == 1
                and ("norm" in name.lower() or "bn" in name or "head.1" in name or "downsample.1" in name)
                and "weight" in name
            ):
                t.copy_(1 + 0.1 * noise)
            elif t.ndim == 1:
                t.copy_(0.1 * noise)
            elif "position_ids" not in name:
                t.copy_(noise * (1.0 / max(1, t[0].numel()) ** 0.5))
        # sharper word-to-patch attention than a random layer gives, so the maps are far from uniform
        model.word_local_atten_layer.in_proj_weight.mul_(8)


def _their_text(model: nn.Module, texts: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
    """Their dataset's cleaning + tokenisation (``create_path_2_sent_mapping``, ``get_caption``), then their encoder."""
    import pandas as pd
    from mgca.datasets.pretrain_dataset import MultimodalPretrainingDataset as D

    fake = types.SimpleNamespace(
        df=pd.DataFrame({"impression": list(texts), "findings": [""] * len(texts), "Path": list(texts)}),
        tokenizer=model.text_encoder_q.tokenizer,
        max_words=112,
    )
    import mgca.datasets.pretrain_dataset as pretrain

    pretrain.MIMIC_CXR_PATH_COL = "Path"
    path2sent = D.create_path_2_sent_mapping(fake)
    fake.path2sent = path2sent
    tokens = [D.get_caption(fake, t)[0] for t in texts]
    ids = torch.cat([t["input_ids"] for t in tokens])
    mask = torch.cat([t["attention_mask"] for t in tokens])
    types_ = torch.cat([t["token_type_ids"] for t in tokens])
    report, words, _, sents = model.text_encoder_q(ids, mask, types_)
    word_emb = F.normalize(model.text_encoder_q.local_embed(words), dim=-1)
    report_emb = F.normalize(model.text_encoder_q.global_embed(report), dim=-1)
    return report_emb, word_emb, sents, ids


def _their_images(model: nn.Module, paths: list[Path]) -> tuple[torch.Tensor, ...]:
    from mgca.datasets.transforms import DataTransforms
    from mgca.datasets.utils import get_imgs

    x = torch.stack([get_imgs(str(p), 256, DataTransforms(is_train=False)) for p in paths])
    feat, patches = model.img_encoder_q(x)
    glob = F.normalize(model.img_encoder_q.global_embed(feat), dim=-1)
    local = F.normalize(model.img_encoder_q.local_embed(patches), dim=-1)
    return x, feat, glob, local


def _variant(root: Path, img_encoder: str, seed: int, tokenizer_dir: Path, out: Path) -> None:
    from mgca.models.mgca.mgca_module import MGCA

    from maco_cxr import read_image
    from maco_cxr.data.letterbox import letterbox_image
    from maco_cxr.families.base import cosine_prototype

    torch.manual_seed(seed)
    model = MGCA(img_encoder=img_encoder, emb_dim=EMB_DIM, num_prototypes=PROTOTYPES)
    _randomise(model, seed)
    ckpt = out / ("vit_base.ckpt" if "vit" in img_encoder else "resnet_50.ckpt")
    torch.save(
        {
            "epoch": 0,
            "global_step": 0,
            "pytorch-lightning_version": "1.5.10",
            "state_dict": model.state_dict(),
            "hyper_parameters": model.hparams,
        },
        ckpt,
    )
    model = MGCA(img_encoder=img_encoder, emb_dim=EMB_DIM, num_prototypes=PROTOTYPES)
    model.load_state_dict(torch.load(ckpt, weights_only=False)["state_dict"])  # their load_from_checkpoint
    model.eval()
    grid = 14 if "vit" in img_encoder else 19
    arrays: dict[str, np.ndarray] = {}
    shared: dict[str, np.ndarray] = {}
    with torch.no_grad():
        x, feat, glob, local = _their_images(model, [REAL / p for p in IMAGES])
        shared["image_inputs"] = torch.round((x[:, 0] * 0.5 + 0.5) * 255).to(torch.uint8).numpy()
        arrays.update(image_pooled=feat.numpy(), image_global=glob.numpy(), image_local=local.numpy())
        report, words, sents, ids = _their_text(model, TEXTS)
        shared.update(texts=np.array(TEXTS), text_ids=ids.numpy(), text_sentences=np.array(sents))
        arrays.update(text_global=report.numpy(), text_words=words.numpy())
        probabilities = []
        for name, (pos, neg) in CLASSES.items():
            p, n = (cosine_prototype(_their_text(model, side)[0]) for side in (pos, neg))
            shared[f"prompts_positive/{name}"], shared[f"prompts_negative/{name}"] = np.array(pos), np.array(neg)
            pair = torch.stack([glob @ p, glob @ n]) / model.hparams.softmax_temperature
            probabilities.append(torch.softmax(pair, dim=0)[0])
        shared["classes"] = np.array(list(CLASSES))
        arrays["zero_shot_probabilities"] = torch.stack(probabilities, 1).numpy()
        boxed = np.stack([letterbox_image(read_image(REAL / p), GROUND_SIZE)[0] for p in GROUNDING_IMAGES])
        with tempfile.TemporaryDirectory() as tmp:
            from PIL import Image

            files = []
            for i, b in enumerate(boxed):
                files.append(Path(tmp) / f"{i}.png")
                Image.fromarray(b).save(files[-1])
            _, _, _, patches = _their_images(model, files)
        extent = int(224 * GROUND_SIZE / 256)
        margin = GROUND_SIZE - extent
        maps = []
        for i, group in enumerate(PHRASES):
            _, word_emb, sent, _ = _their_text(model, group)
            # notebook cell 3: word_local_atten_layer(word_emb, patch_emb, patch_emb), their batch of phrases
            _, word_atten = model.word_local_atten_layer(
                word_emb, patches[i : i + 1].expand(len(group), -1, -1), patches[i : i + 1].expand(len(group), -1, -1)
            )
            for k in range(len(group)):
                real = [j for j, w in enumerate(sent[k][1:]) if w not in ("[SEP]", "[PAD]")]
                # notebook cell 5: rearrange to the grid, bilinear with align_corners=True (to the crop's extent)
                m = word_atten[k, real].mean(0).reshape(1, 1, grid, grid)
                m = F.interpolate(m, size=[extent, extent], mode="bilinear", align_corners=True)[0, 0]
                maps.append(F.pad(m, (margin // 2, margin - margin // 2) * 2, value=float("nan")).numpy())
        maps = np.stack(maps).reshape(len(PHRASES), -1, GROUND_SIZE, GROUND_SIZE)
        shared.update(letterboxed=boxed, phrases=np.array(PHRASES))
        arrays.update(map_nan=np.packbits(np.isnan(maps)), map_values=maps[..., 1::3, 1::3])
    np.savez_compressed(out / f"expected_{'vit' if 'vit' in img_encoder else 'resnet'}.npz", **arrays)
    np.savez_compressed(out / "inputs.npz", **shared)


def main() -> None:
    root = Path(sys.argv[1]).resolve()
    sys.path.insert(0, str(root))
    _stub_training_libraries()
    tokenizer_dir = _tokenizer_folder(HERE / "tokenizer")
    _shrink(tokenizer_dir)
    _variant(root, "vit_base", 0, tokenizer_dir, HERE)
    _variant(root, "resnet_50", 1, tokenizer_dir, HERE)


if __name__ == "__main__":
    main()
