"""maco-cxr: MaCo, the masked-contrastive chest X-ray vision-language foundation model.

    import maco_cxr
    model = maco_cxr.load("maco.pth")            # official weights, or a directory we saved
    probs = maco_cxr.zero_shot(model, "cxr.dcm", ["Pneumothorax", "Effusion"])
    heatmap = maco_cxr.ground(model, "cxr.png", "right pleural effusion")

Submodules are imported on first use so that ``import maco_cxr`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from maco_cxr._version import __version__

_EXPORTS = {
    "load": "maco_cxr.families",
    "load_official": "maco_cxr.hub",
    "save_pretrained": "maco_cxr.hub",
    "create_model": "maco_cxr.hub",
    "MacoModel": "maco_cxr.models.maco",
    "ReportTokenizer": "maco_cxr.data.tokenizer",
    "MacoConfig": "maco_cxr.models.config",
    "VisionConfig": "maco_cxr.models.config",
    "DecoderConfig": "maco_cxr.models.config",
    "TextConfig": "maco_cxr.models.config",
    "preset": "maco_cxr.models.config",
    "read_image": "maco_cxr.data.io",
    "read_image_with_info": "maco_cxr.data.io",
    "encode_images": "maco_cxr.inference",
    "encode_texts": "maco_cxr.inference",
    "patch_embeddings": "maco_cxr.inference",
    "similarity": "maco_cxr.inference",
    "zero_shot": "maco_cxr.tasks.zeroshot",
    "ground": "maco_cxr.tasks.grounding",
    "retrieve": "maco_cxr.tasks.retrieval",
    "run_zeroshot": "maco_cxr.tasks.zeroshot",
    "compare": "maco_cxr.tasks.compare",
    "run_grounding": "maco_cxr.tasks.grounding",
    "run_retrieval": "maco_cxr.tasks.retrieval",
    "predict_folder": "maco_cxr.tasks.predict",
    "MacoError": "maco_cxr.errors",
    "pretrain": "maco_cxr.pretraining.pretrain",
    "PretrainConfig": "maco_cxr.pretraining.config",
    "finetune_classifier": "maco_cxr.tasks.finetune",
    "train_segmenter": "maco_cxr.tasks.finetune",
    "train_detector": "maco_cxr.tasks.finetune",
    "load_finetuned": "maco_cxr.tasks.finetune",
    "ClassifyConfig": "maco_cxr.tasks.finetune",
    "SegmentConfig": "maco_cxr.tasks.finetune",
    "DetectConfig": "maco_cxr.tasks.finetune",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


# Exports whose module name would be ambiguous at the top level (a fine-tuned model has its own
# ``predict(images)``).
_RENAMED = {"predict_folder": "predict"}


# Former names, kept only to say what they became: ``segment`` and ``detect`` trained a model
# while ``zero_shot`` and ``ground`` infer, so the training functions now say that they train.
_FORMER_NAMES = {"segment": "train_segmenter", "detect": "train_detector"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), _RENAMED.get(name, name))
    if name in _FORMER_NAMES:
        raise AttributeError(
            f"maco_cxr.{name} is now maco_cxr.{_FORMER_NAMES[name]} (same arguments: it "
            "trains a model and returns a FitResult)"
        )
    raise AttributeError(f"module 'maco_cxr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
