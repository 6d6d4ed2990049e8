"""Pre-training: the loop, distributed helpers, checkpoints and metric logs."""

from maco_cxr.train.config import PretrainConfig, load_pretrain_config
from maco_cxr.train.pretrain import pretrain

__all__ = ["PretrainConfig", "load_pretrain_config", "pretrain"]
