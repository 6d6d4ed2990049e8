"""Foundation-model families: one module per family, found by name.

Each module (``maco_cxr.families.<module>``) defines ``load(path, *, tokenizer=None)``
returning a :class:`~maco_cxr.families.base.FoundationModel` built from the authors'
released file as it is (their key layout, sizes read from the tensors). Modules are imported on
first use, so the peers' libraries (open_clip, transformers: the ``peers`` extra) are needed
only by the families that use them; MaCo needs none of them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maco_cxr.errors import ConfigError

__all__ = ["FAMILIES", "FamilyInfo", "family_info", "load", "load_family", "split_model_spec"]


@dataclass(frozen=True)
class FamilyInfo:
    """What a family is and can do, for the registry table, errors and the README."""

    name: str
    module: str
    summary: str
    capabilities: frozenset[str]
    licence: str
    weights: str
    tokenizer: str
    needs: str = "peers"


FAMILIES: dict[str, FamilyInfo] = {
    info.name: info
    for info in (
        FamilyInfo(
            name="maco",
            module="maco",
            summary="MaCo: masked ViT-B/16 + BERT, correlation-weighted contrast (Huang et al. 2024)",
            capabilities=frozenset({"texts", "patches", "zeroshot", "grounding", "finetune"}),
            licence="code MIT; weights trained on MIMIC-CXR (PhysioNet credentialed research use)",
            weights="github.com/SZUHvern/MaCo (Google Drive link in its README); `maco-cxr download maco-base`",
            tokenizer="shipped with the package",
            needs="",
        ),
        FamilyInfo(
            name="chexzero",
            module="chexzero",
            summary="CheXzero: OpenAI CLIP ViT-B/32 fine-tuned on MIMIC-CXR reports (Tiu et al. 2022)",
            capabilities=frozenset({"texts", "zeroshot", "finetune"}),
            licence="code MIT; weights trained on MIMIC-CXR (PhysioNet credentialed research use)",
            weights="github.com/rajpurkarlab/CheXzero (Google Drive link in its README)",
            tokenizer="none: CLIP's BPE vocabulary ships with open_clip",
        ),
        FamilyInfo(
            name="biovil",
            module="biovil",
            summary="BioViL: ResNet-50 + CXR-BERT, projected to 128 (Boecking et al. 2022, hi-ml-multimodal)",
            capabilities=frozenset({"texts", "patches", "zeroshot", "grounding", "finetune"}),
            licence="code MIT (microsoft/hi-ml); weights MIT (Hugging Face microsoft/BiomedVLP-CXR-BERT-specialized)",
            weights="Hugging Face microsoft/BiomedVLP-CXR-BERT-specialized (biovil_image_resnet50_proj_size_128.pt)",
            tokenizer="the CXR-BERT tokenizer folder (vocab.txt + tokenizer_config.json) of that Hub repository",
        ),
        FamilyInfo(
            name="biovil-t",
            module="biovil",
            summary="BioViL-T: ResNet-50 + ViT temporal image model + CXR-BERT (Bannur et al. 2023, hi-ml-multimodal)",
            capabilities=frozenset({"texts", "patches", "zeroshot", "grounding", "finetune"}),
            licence="code MIT (microsoft/hi-ml); weights MIT (Hugging Face microsoft/BiomedVLP-BioViL-T)",
            weights="Hugging Face microsoft/BiomedVLP-BioViL-T (biovil_t_image_model_proj_size_128.pt)",
            tokenizer="the CXR-BERT tokenizer folder (vocab.txt + tokenizer_config.json) of that Hub repository",
        ),
        FamilyInfo(
            name="mgca",
            module="mgca",
            summary="MGCA: ResNet-50 or ViT-B/16 + BioClinicalBERT, multi-granularity alignment (Wang et al. 2022)",
            capabilities=frozenset({"texts", "patches", "zeroshot", "grounding", "finetune"}),
            licence="no licence file in HKU-MedAI/MGCA (ask the authors); weights trained on MIMIC-CXR (PhysioNet)",
            weights="github.com/HKU-MedAI/MGCA (resnet_50.ckpt / vit_base.ckpt, Google Drive link in its README)",
            tokenizer="the Bio_ClinicalBERT tokenizer folder (Hugging Face emilyalsentzer/Bio_ClinicalBERT)",
        ),
        FamilyInfo(
            name="mrm",
            module="mrm",
            summary="MRM: masked record modelling ViT-B/16 image encoder, no aligned text tower (Zhou et al. 2023)",
            capabilities=frozenset({"finetune"}),
            licence="code MIT (RL4M/MRM-pytorch); weights trained on MIMIC-CXR (PhysioNet credentialed research use)",
            weights="github.com/RL4M/MRM-pytorch (MRM.pth, Google Drive link in its README)",
            tokenizer="none (image encoder only)",
        ),
        FamilyInfo(
            name="biomedclip",
            module="biomedclip",
            summary="BiomedCLIP: ViT-B/16 + PubMedBERT trained on PMC-15M figures (Zhang et al. 2023), via open_clip",
            capabilities=frozenset({"texts", "zeroshot", "finetune"}),
            licence="MIT (Hugging Face microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224)",
            weights=(
                "Hugging Face microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 (open_clip_pytorch_model.bin)"
            ),
            tokenizer="the PubMedBERT tokenizer folder of that Hub repository (vocab.txt + tokenizer_config.json)",
        ),
    )
}


def family_info(name: str) -> FamilyInfo:
    """The registry entry of ``name``; an unknown name is an error listing the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(f"unknown model family {name!r}; known families: {', '.join(FAMILIES)}") from None


def load_family(path: str | Path, family: str, *, tokenizer: str | Path | None = None, **options: Any) -> Any:
    """Load ``path`` (the authors' released file) as a model of ``family``."""
    info = family_info(family)
    try:
        module = importlib.import_module(f"{__name__}.{info.module}")
    except ImportError as err:
        raise ConfigError(
            f"the {family} family needs {err.name or 'a library that is not installed'}: "
            f"pip install 'maco-cxr[{info.needs}]'"
        ) from err
    if info.module != info.name:  # a module serving several families (BioViL, BioViL-T) is told which
        options["family"] = info.name
    return module.load(path, tokenizer=tokenizer, **options)


def split_model_spec(spec: str) -> tuple[str, str]:
    """``FAMILY:PATH`` -> (family, path); a spec without a known family prefix is MaCo's.

    Windows drive letters and ``hf-hub:`` stay paths: only registered family names split.
    """
    head, sep, tail = spec.partition(":")
    if sep and head in FAMILIES:
        if not tail:
            raise ConfigError(f"model spec {spec!r} names the {head} family but no file; write {head}:PATH")
        return head, tail
    return "maco", spec


def load(
    path_or_dir: str | Path,
    text_heads: int | None = None,
    *,
    family: str = "maco",
    tokenizer: str | Path | None = None,
    **options: Any,
) -> Any:
    """Load a model of any family: ``maco_cxr.load(path)`` is MaCo (see :func:`maco_cxr.hub.load`
    for its options, ``text_heads`` included); ``family="chexzero"`` etc. reads that family's
    released file (``tokenizer``: the folder of the tokenizer files its authors publish)."""
    if text_heads is not None:
        if family != "maco":
            raise ConfigError(f"text_heads is an option of MaCo checkpoints, not of the {family} family")
        options["text_heads"] = text_heads
    return load_family(path_or_dir, family, tokenizer=tokenizer, **options)
