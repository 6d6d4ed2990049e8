"""maco-cxr: MaCo, the masked-contrastive chest X-ray vision-language foundation model."""

__version__ = "0.1.0"
