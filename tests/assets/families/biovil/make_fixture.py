"""Make the BioViL / BioViL-T fidelity fixture by running hi-ml-multimodal itself on tiny random models.

Usage (see README.md)::

    PYTHONPATH=/work/main/src /work/peers/biovil-venv/bin/python make_fixture.py HI_ML_MULTIMODAL_SRC

``HI_ML_MULTIMODAL_SRC`` is the folder holding the ``health_multimodal`` package (``hi-ml-multimodal/src`` of a
microsoft/hi-ml checkout). Their code builds the models (``ImageModel``, ``MultiImageEncoder``, ``MLP``,
``CXRBertModel``), saves them in their release layout, reloads them the way their loaders do, and computes every
expected output through their inference engines on PNG files. Only the sizes are shrunk (README.md says how).
"""

from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(sys.argv[1]).resolve()))

from health_multimodal.image.data.transforms import create_chest_xray_transform_for_inference  # noqa: E402
from health_multimodal.image.inference_engine import ImageInferenceEngine  # noqa: E402
from health_multimodal.image.model import encoder as encoder_module  # noqa: E402
from health_multimodal.image.model import model as model_module  # noqa: E402
from health_multimodal.image.model.encoder import get_encoder_output_dim  # noqa: E402
from health_multimodal.image.model.modules import MLP  # noqa: E402
from health_multimodal.image.model.pretrained import (  # noqa: E402
    BIOVIL_IMAGE_WEIGHTS_NAME,
    BIOVIL_T_IMAGE_WEIGHTS_NAME,
)
from health_multimodal.image.model.resnet import _resnet  # noqa: E402
from health_multimodal.image.model.transformer import VisionTransformerPooler  # noqa: E402
from health_multimodal.image.model.types import ImageEncoderType  # noqa: E402
from health_multimodal.image.utils import TRANSFORM_RESIZE  # noqa: E402
from health_multimodal.text.inference_engine import TextInferenceEngine  # noqa: E402
from health_multimodal.text.model import CXRBertConfig, CXRBertModel, CXRBertTokenizer  # noqa: E402
from health_multimodal.vlp.inference_engine import ImageTextInferenceEngine  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import io  # noqa: E402
from torchvision.models.resnet import Bottleneck  # noqa: E402

from maco_cxr.data.io import read_image  # noqa: E402
from maco_cxr.data.letterbox import letterbox_image  # noqa: E402

HERE = Path(__file__).resolve().parent
REAL = HERE.parents[2] / "assets" / "cxr-real"
IMAGES = (
    "images/covid_58cb9263f16e94305c730685358e4e_jumbo.png",
    "images/covid_X-ray_of_cyst_in_pneumocystis_pneumonia_1.png",
    "images/covid_acute-respiratory-distress-syndrome-ards.png",
)
GROUNDED = IMAGES[:2]
JOINT = 16
T_WIDTH = 16  # BioViL-T's temporal width (theirs: 256, a literal in MultiImageEncoder.__init__)
CLASSES = {
    # their test_zero_shot_classification.py _get_default_text_prompts_for_pneumonia
    "pneumonia": (
        [
            "Findings consistent with pneumonia",
            "Findings suggesting pneumonia",
            "This opacity can represent pneumonia",
            "Findings are most compatible with pneumonia",
        ],
        [
            "There is no pneumonia",
            "No evidence of pneumonia",
            "No evidence of acute pneumonia",
            "No signs of pneumonia",
        ],
    ),
    "pleural effusion": (
        ["Findings suggesting pleural effusion", "There is a small left pleural effusion."],
        ["No pleural effusion", "There is no pleural effusion!"],
    ),
}
PHRASES = (["Left basilar consolidation seen", "Right pleural effusion."], ["Cardiomegaly", "Bilateral opacities"])
TEXTS = ["Left basilar consolidation seen", "No acute cardiopulmonary process.", "Small right pneumothorax?"]
CROP = {"biovil": 480, "biovil-t": 448}  # health_multimodal/image/utils.py get_image_inference
STRIDE = 4  # maps are stored at [1::4, 1::4] (plus their full NaN mask) to keep the fixture small


class TinyBottleneck(Bottleneck):
    """torchvision's Bottleneck with expansion 1: block outputs 64..512 channels instead of 256..2048."""

    expansion = 1


def tiny_resnet50(pretrained: bool = False, progress: bool = True, **kwargs: object) -> nn.Module:
    """Stands in for their ``resnet50``: their ``_resnet``/``ResNetHIML``, depths 2-1-1-1, width 4, 10 classes."""
    return _resnet("", TinyBottleneck, [2, 1, 1, 1], pretrained, progress, width_per_group=4, num_classes=10, **kwargs)


def randomise(module: nn.Module, generator: torch.Generator) -> None:
    """Every float tensor (weights and BatchNorm running statistics) random, so no default value hides a bug."""
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.5 + 0.75)
            elif name.endswith("running_mean") or name.endswith("bias"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif tensor.ndim == 1:
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.5 + 0.75)
            else:
                fan_in = max(1, tensor[0].numel())
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * (1.5 / fan_in) ** 0.5)


def build_image_model(family: str) -> model_module.ImageModel:
    """Their ImageModel (as get_biovil_image_encoder / get_biovil_t_image_encoder build it), tiny."""
    encoder_module.resnet50 = tiny_resnet50
    kind = ImageEncoderType.RESNET50 if family == "biovil" else ImageEncoderType.RESNET50_MULTI_IMAGE
    model = model_module.ImageModel(img_encoder_type=kind, joint_feature_size=JOINT)
    if family == "biovil-t":
        enc = model.encoder
        backbone = get_encoder_output_dim(enc.encoder, device=torch.device("cpu"))
        enc.backbone_to_vit = nn.Conv2d(backbone, T_WIDTH, kernel_size=1, stride=1, padding=0, bias=False)
        enc.vit_pooler = VisionTransformerPooler(input_dim=T_WIDTH, grid_shape=(14, 14))
        enc.missing_previous_emb = nn.Parameter(torch.zeros(1, T_WIDTH, 1, 1))
        model.feature_size = get_encoder_output_dim(enc, device=torch.device("cpu"))
        model.projector = MLP(input_dim=model.feature_size, output_dim=JOINT, hidden_dim=JOINT, use_1x1_convs=True)
    return model


def write_tokenizer(folder: Path) -> None:
    """A CXRBertTokenizer over a tiny vocabulary: the words of every text, letters and ##letters."""
    words: set[str] = set()
    for text in [
        *TEXTS,
        *(p for group in PHRASES for p in group),
        *(t for pn in CLASSES.values() for t in sum(pn, [])),
    ]:
        words.update("".join(c if c.isalnum() else " " for c in text.lower()).split())
    letters = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789"))
    punctuation = list(".,!?;:-()/'")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *punctuation, *letters, *(f"##{c}" for c in letters)]
    vocab += sorted(words - set(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp, "vocab.txt")
        vocab_file.write_text("\n".join(vocab) + "\n")
        CXRBertTokenizer(vocab_file=str(vocab_file), do_lower_case=True).save_pretrained(str(folder))


def write_text_model(folder: Path, vocab_size: int, seed: int) -> CXRBertModel:
    """A tiny CXRBertModel saved as its Hub repository holds it: config.json + pytorch_model.bin."""
    config = CXRBertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        projection_size=JOINT,
        architectures=["CXRBertModel"],
    )
    model = CXRBertModel(config)
    randomise(model, torch.Generator().manual_seed(seed))
    model.tie_weights()
    config.save_pretrained(str(folder))
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return CXRBertModel.from_pretrained(str(folder)).eval()  # their get_cxr_bert / get_biovil_t_bert load


def make(family: str, tokenizer: CXRBertTokenizer, seed: int) -> None:
    folder = HERE / family
    folder.mkdir(exist_ok=True)
    weights_name = BIOVIL_IMAGE_WEIGHTS_NAME if family == "biovil" else BIOVIL_T_IMAGE_WEIGHTS_NAME
    model = build_image_model(family)
    randomise(model, torch.Generator().manual_seed(seed))
    torch.save(model.state_dict(), folder / weights_name)
    image_model = build_image_model(family)  # reloaded as their ImageModel(pretrained_model_path=...) does
    image_model.load_state_dict(torch.load(folder / weights_name, map_location="cpu"))

    text_model = write_text_model(folder, len(tokenizer), seed + 1)
    transform = create_chest_xray_transform_for_inference(resize=TRANSFORM_RESIZE, center_crop_size=CROP[family])
    image_engine = ImageInferenceEngine(image_model=image_model, transform=transform)
    text_engine = TextInferenceEngine(tokenizer=tokenizer, text_model=text_model)
    engine = ImageTextInferenceEngine(image_inference_engine=image_engine, text_inference_engine=text_engine)

    out: dict[str, np.ndarray] = {}
    inputs, global_, patches, pooled = [], [], [], []
    with torch.no_grad():
        for name in IMAGES:
            path = REAL / name
            x, _ = image_engine.load_and_transform_input_image(path, transform)
            grey = (x[0, 0] * 255).round()
            assert torch.equal(grey / 255, x[0, 0]) and torch.equal(x[0, 0], x[0, 2])
            inputs.append(grey.to(torch.uint8).numpy())
            global_.append(image_engine.get_projected_global_embedding(path).numpy())
            patches.append(image_engine.get_projected_patch_embeddings(path)[0].numpy())
            pooled.append(image_model(x).img_embedding[0].numpy())
        out["image_inputs"] = np.stack(inputs)
        out["image_global"] = np.stack(global_)
        out["image_patches"] = np.stack(patches)
        out["image_pooled"] = np.stack(pooled)
        out["texts"] = np.array(TEXTS)
        out["text_raw"] = text_engine.get_embeddings_from_prompt(TEXTS, normalize=False).numpy()
        out["text_normalised"] = text_engine.get_embeddings_from_prompt(TEXTS, normalize=True).numpy()

        classes = list(CLASSES)
        out["classes"] = np.array(classes)
        scores = np.array(
            [
                [
                    [engine.get_similarity_score_from_raw_data(REAL / name, CLASSES[c][k]) for k in (0, 1)]
                    for c in classes
                ]
                for name in IMAGES
            ]
        )
        out["zero_shot_similarities"] = scores  # [N, C, (positive, negative)]
        out["zero_shot_probabilities"] = torch.softmax(torch.from_numpy(scores), dim=-1)[..., 0].numpy()
        for c, (positive, negative) in CLASSES.items():
            out[f"prompts_positive/{c}"] = np.array(positive)
            out[f"prompts_negative/{c}"] = np.array(negative)

    size = CROP[family]
    boxed = []
    with tempfile.TemporaryDirectory() as tmp:
        maps: dict[str, list[np.ndarray]] = {"bilinear": [], "nearest": []}
        for k, name in enumerate(GROUNDED):
            pixels, _ = letterbox_image(read_image(REAL / name), size)
            boxed.append(pixels)
            png = Path(tmp, f"boxed{k}.png")
            Image.fromarray(pixels).save(png)
            for mode in maps:
                maps[mode].append(
                    np.stack([engine.get_similarity_map_from_raw_data(png, p, interpolation=mode) for p in PHRASES[k]])
                )
    out["letterboxed"] = np.stack(boxed)
    out["phrases"] = np.array(PHRASES)
    for mode, stack in maps.items():
        full = np.stack(stack).astype(np.float32)  # [N, P, S, S]
        assert full.shape[-1] == size and full.shape[-2] == size
        out[f"map_nan_{mode}"] = np.packbits(np.isnan(full).reshape(-1))
        out[f"map_values_{mode}"] = full[..., 1::STRIDE, 1::STRIDE]
    np.savez_compressed(HERE / f"expected_{family}.npz", **out)
    print(family, {k: v.shape for k, v in out.items()})


def check_reader() -> None:
    """The test reads the images with maco_cxr.read_image: it must give the array their load_image reads."""
    for name in IMAGES:
        assert np.array_equal(read_image(REAL / name), io.imread(REAL / name))


def main() -> None:
    with open(REAL / "manifest.csv") as handle:
        known = {row["image_path"] for row in csv.DictReader(handle)}
    assert all(name in known for name in IMAGES)
    check_reader()
    write_tokenizer(HERE / "tokenizer")
    tokenizer = CXRBertTokenizer.from_pretrained(str(HERE / "tokenizer"))
    make("biovil", tokenizer, seed=1)
    make("biovil-t", tokenizer, seed=11)


if __name__ == "__main__":
    main()
