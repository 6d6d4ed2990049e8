"""Make the BiomedCLIP fixture by running open_clip (BiomedCLIP's published inference path) on a tiny random model.

Usage (open_clip_torch, timm and transformers installed; no network needed):

    python make_fixture.py

Writes, in the layout of the Hub repository microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224:
``open_clip_config.json`` (BiomedCLIP's, with a tiny timm ViT and embed_dim), ``open_clip_pytorch_model.bin``
(with the ``text.transformer.embeddings.position_ids`` buffer that transformers < 4.31 saved, as the real
file has), the tokenizer files (a tiny uncased WordPiece vocabulary), and ``expected.npz``.

open_clip's ``local-dir:`` loading reads the config, the weights and the tokenizer from one folder; only
the text tower's BERT config would come from the Hub (``hf_model_name``): it is written to a temporary
folder from the tiny sizes, and a temporary copy of the config points ``hf_model_name`` at it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from PIL import Image
from transformers import BertConfig

HERE = Path(__file__).resolve().parent
IMAGES = HERE.parents[1] / "cxr-real" / "images"
NAMES = (
    "covid_58cb9263f16e94305c730685358e4e_jumbo.png",
    "covid_ARDSSevere.png",
    "covid_covid-19-pneumonia-15-PA.png",
)
PUBMEDBERT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
CONFIG = {
    "model_cfg": {
        "embed_dim": 16,
        "vision_cfg": {
            "timm_model_name": "test_vit",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 160,
        },
        "text_cfg": {
            "hf_model_name": PUBMEDBERT,
            "hf_tokenizer_name": PUBMEDBERT,
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": 256,
        },
    },
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
}
BERT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=1, intermediate_size=256)
TEXTS = (
    "No acute cardiopulmonary process.",
    "Bilateral patchy opacities, worse at the right lung base, compatible with pneumonia.",
    "Small left pleural effusion. Heart size is normal.",
    "this is a photo of chest X-ray",
)
CLASSES = ("pneumonia", "pleural effusion", "cardiomegaly")
TEMPLATES = ("this is a photo of {}",), ("this is a photo of no {}",)
SPECIAL = ("[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def vocabulary() -> list[str]:
    """Specials, punctuation, letters and their continuations, and the words of the fixture texts."""
    words = set()
    for text in (*TEXTS, *CLASSES, *(t.format(c) for side in TEMPLATES for t in side for c in CLASSES)):
        words.update("".join(ch if ch.isalnum() else " " for ch in text.lower()).split())
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    return [*SPECIAL, *".,-:;()/'", *letters, *(f"##{c}" for c in letters), *sorted(words - set(letters))]


def write_tokenizer(folder: Path) -> None:
    (folder / "vocab.txt").write_text("".join(f"{token}\n" for token in vocabulary()), encoding="utf-8")
    tokens = {
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(tokens, indent=2) + "\n")
    config = {
        "do_lower_case": True,
        "tokenizer_class": "BertTokenizer",
        "model_max_length": 1000000000000000019884624838656,
        **tokens,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def runnable_copy(folder: Path, bert_dir: Path, *, weights: bool = True) -> Path:
    """A temporary local-dir with the fixture's files and ``hf_model_name`` pointing at the BERT config."""
    copy = Path(tempfile.mkdtemp())
    skip = {"make_fixture.py", "README.md", "expected.npz", *(() if weights else ("open_clip_pytorch_model.bin",))}
    for item in folder.iterdir():
        if item.is_file() and item.name not in skip:
            shutil.copy(item, copy / item.name)
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"]["hf_model_name"] = str(bert_dir)
    (copy / "open_clip_config.json").write_text(json.dumps(config))
    return copy


def main() -> None:
    torch.manual_seed(0)
    (HERE / "open_clip_config.json").write_text(json.dumps(CONFIG, indent=4) + "\n")
    write_tokenizer(HERE)
    with tempfile.TemporaryDirectory() as tmp:
        bert_dir = Path(tmp)
        BertConfig(vocab_size=len(vocabulary()), **BERT).save_pretrained(bert_dir)

        # 1. the random model, as open_clip builds it from the config, saved in the Hub file's layout
        blank = runnable_copy(HERE, bert_dir, weights=False)
        model = open_clip.create_model(f"local-dir:{blank}", pretrained_text=False)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                if name == "logit_scale":
                    tensor.fill_(np.log(50.0))
                elif "norm" in name.lower() and name.endswith("weight"):
                    tensor.copy_(1 + 0.2 * torch.randn(tensor.shape, generator=generator))
                elif tensor.is_floating_point():
                    tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
        state = model.state_dict()
        state["text.transformer.embeddings.position_ids"] = torch.arange(512)[None]
        torch.save(state, HERE / "open_clip_pytorch_model.bin")
        shutil.rmtree(blank)

        # 2. open_clip's published inference path on those files
        folder = runnable_copy(HERE, bert_dir)
        model, preprocess = open_clip.create_model_from_pretrained(f"local-dir:{folder}")
        tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
        model.eval()
        x = torch.stack([preprocess(Image.open(IMAGES / name)) for name in NAMES])
        mean, std = CONFIG["preprocess_cfg"]["mean"][0], CONFIG["preprocess_cfg"]["std"][0]
        crops = (x[:, 0] * std + mean) * 255
        assert (crops - crops.round()).abs().max() < 1e-3
        tokens = tokenizer(list(TEXTS))
        with torch.no_grad():
            image_embeddings = model.encode_image(x)
            features = model.visual.trunk(x)
            text_embeddings = model.encode_text(tokens)
            positive = build_zero_shot_classifier(model, tokenizer, CLASSES, TEMPLATES[0], use_tqdm=False)
            negative = build_zero_shot_classifier(model, tokenizer, CLASSES, TEMPLATES[1], use_tqdm=False)
            z = model.encode_image(x, normalize=True)
            logits = model.logit_scale.exp() * torch.stack([z @ positive, z @ negative], dim=-1)
            probabilities = logits.softmax(dim=-1)[..., 0]
        shutil.rmtree(folder)

    out = {
        "images": np.array(NAMES),
        "crops": crops.round().to(torch.uint8).numpy(),
        "image_embeddings": image_embeddings.numpy(),
        "image_features": features.numpy(),
        "texts": np.array(TEXTS),
        "token_ids": tokens.numpy().astype(np.int32),
        "text_embeddings": text_embeddings.numpy(),
        "classes": np.array(CLASSES),
        "probabilities": probabilities.numpy(),
    }
    np.savez_compressed(HERE / "expected.npz", **out)
    print({k: v.shape for k, v in out.items()})


if __name__ == "__main__":
    main()
