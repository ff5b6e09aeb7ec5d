"""Micro configs for model tests: FIBER-tiny with a tokenizer made by the test, no dropout or drop path."""
from __future__ import annotations

from detectron2.config import CfgNode, get_cfg

from fiber_d2.config import add_fiber_config
from fiber_d2.model_zoo import get_config_file


def micro_coarse_cfg(
    tokenizer_dir: str, meta_architecture: str, vocab_size: int = 400, overrides: dict | None = None
) -> CfgNode:
    """FIBER-tiny for `meta_architecture` (a coarse model), deterministic in training; `overrides`: {"KEY.PATH":
    value}."""
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.merge_from_file(get_config_file("backbone/FIBER-tiny.yaml"))
    cfg.MODEL.META_ARCHITECTURE = meta_architecture
    cfg.MODEL.FIBER.TOKENIZER = tokenizer_dir
    cfg.MODEL.FIBER.TEXT.VOCAB_SIZE = vocab_size
    cfg.MODEL.FIBER.SWIN.DROP_PATH_RATE = 0.0
    cfg.MODEL.FIBER.TEXT.DROPOUT = 0.0
    for key, value in (overrides or {}).items():
        cfg.merge_from_list([key, value])
    return cfg
