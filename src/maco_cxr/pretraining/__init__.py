"""MaCo pre-training: its config, its image-report data and what it adds to the one run
skeleton (:mod:`maco_cxr.runtime`, shared with fine-tuning).

Only the config is imported here: the loop is :func:`maco_cxr.pretraining.pretrain.pretrain` (also
``maco_cxr.pretrain``), so that reading and checking a config (the CLI does it first) does not
import torch. The package does not re-export ``pretrain``: the name is its submodule's.
"""

from maco_cxr.pretraining.config import PretrainConfig, load_pretrain_config

__all__ = ["PretrainConfig", "load_pretrain_config"]
