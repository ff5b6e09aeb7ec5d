"""`latency`: our grounding detector against Hugging Face's `GroundingDinoForObjectDetection` (Liu et al., 2023),
both with random weights, in one process: the same image size, batch and prompt token count, fp32 and bf16
(`torch.autocast`). Grounding DINO is sized from our config (Swin and text encoder dimensions; its transformer width
is our FPN width, its FFN 8x that, as GDINO's 256/2048)."""
from __future__ import annotations

import argparse
import contextlib
import statistics
from pathlib import Path
from typing import Callable

import torch
from detectron2.config import CfgNode
from detectron2.structures import ImageList
from transformers import BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection, SwinConfig

from ..data.prompts import PromptChunk
from ..engine.predictor import FiberPredictor
from .common import (
    Emit,
    add_run_options,
    code_version,
    host_load,
    load_config,
    logger,
    parse_size,
    positive_int,
    rounded,
    set_threads,
    time_variants,
)
from .vocabularies import shapes_predictor

HELP = "our detector vs HF Grounding DINO (random init, same size and tokens), fp32 and bf16"
DEFAULT_CONFIG = "configs/fiber_shapes/fiber_tiny_grounding.yaml"
DTYPES = {"fp32": None, "bf16": torch.bfloat16}
MODELS = ("fiber", "fiber_network", "grounding_dino")
# BERT's [CLS], [SEP] and "." ids: Grounding DINO splits its text self-attention into phrases at these tokens.
BERT_CLS, BERT_SEP, BERT_PERIOD = 101, 102, 1012


def grounding_dino_config(cfg: CfgNode, num_queries: int, num_layers: int) -> GroundingDinoConfig:
    """A Grounding DINO config with our Swin and text encoder sizes (our vocabulary, at least large enough for BERT's
    "." id); transformer width = MODEL.FPN.OUT_CHANNELS, FFN 8x the width, 8 heads, `num_layers` encoder and decoder
    layers, 4 feature levels (GDINO's)."""
    swin, text = cfg.MODEL.FIBER.SWIN, cfg.MODEL.FIBER.TEXT
    width = cfg.MODEL.FPN.OUT_CHANNELS
    backbone = SwinConfig(embed_dim=swin.EMBED_DIM, depths=list(swin.DEPTHS), num_heads=list(swin.NUM_HEADS),
                          window_size=swin.WINDOW_SIZE, mlp_ratio=swin.MLP_RATIO,
                          out_features=["stage2", "stage3", "stage4"])
    text_config = BertConfig(vocab_size=max(text.VOCAB_SIZE, BERT_PERIOD + 1), hidden_size=text.HIDDEN_SIZE,
                             num_hidden_layers=text.NUM_LAYERS, num_attention_heads=text.NUM_HEADS,
                             intermediate_size=text.INTERMEDIATE_SIZE,
                             max_position_embeddings=max(text.MAX_POSITIONS, cfg.MODEL.FIBER.MAX_QUERY_LEN))
    return GroundingDinoConfig(backbone_config=backbone, text_config=text_config, use_timm_backbone=False,
                               use_pretrained_backbone=False, d_model=width, encoder_ffn_dim=8 * width,
                               decoder_ffn_dim=8 * width, encoder_attention_heads=8, decoder_attention_heads=8,
                               encoder_layers=num_layers, decoder_layers=num_layers, num_queries=num_queries,
                               max_text_len=cfg.MODEL.FIBER.MAX_QUERY_LEN, num_feature_levels=4)


def grounding_dino_ids(chunk: PromptChunk, generator: torch.Generator) -> torch.Tensor:
    """BERT-style ids [T] with our chunk's length and phrase layout: [CLS], random word ids (between [SEP] and "."),
    "." after each label's last token, [SEP] last."""
    length = len(chunk.input_ids)
    ids = torch.randint(BERT_SEP + 1, BERT_PERIOD, (length,), generator=generator)
    positions = torch.arange(length)
    for row in chunk.label_token_map:
        after = int(positions[row].max()) + 1
        if after < length - 1:
            ids[after] = BERT_PERIOD
    ids[0], ids[-1] = BERT_CLS, BERT_SEP
    return ids


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `latency`."""
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, help=f"detector config (default {DEFAULT_CONFIG}); "
                        "random weights (MODEL.WEIGHTS is not loaded)")
    parser.add_argument("--size", type=parse_size, default=(256, 320),
                        help="model input HEIGHTxWIDTH (default 256x320; ours pads it to a multiple of 32, and "
                             "Grounding DINO gets the padded size)")
    parser.add_argument("--batch", type=positive_int, default=1, help="images per forward (default 1)")
    parser.add_argument("--dtypes", type=parse_dtypes, default=["fp32", "bf16"],
                        help="comma-separated: fp32 and/or bf16 (autocast) (default fp32,bf16)")
    parser.add_argument("--queries", type=positive_int, default=900,
                        help="Grounding DINO object queries (default 900, its own)")
    parser.add_argument("--gdino-layers", type=layer_count, default=6,
                        help="Grounding DINO encoder and decoder layers each, at least 2 (default 6, its own)")
    parser.add_argument("--names-tokenizer", action="store_true",
                        help="tokenize with a BPE trained on the 48 names even if MODEL.FIBER.TOKENIZER exists (the "
                             "fallback when it does not)")
    add_run_options(parser, "of every model and dtype", "inputs")


def layer_count(text: str) -> int:
    """An argparse type: 2 or more (transformers cannot build Grounding DINO with 1 decoder layer)."""
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"{text}: Grounding DINO needs at least 2 layers")
    return value


def parse_dtypes(text: str) -> list[str]:
    """An argparse type: 'fp32,bf16' -> ["fp32", "bf16"]."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(DTYPES))
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: use fp32 and/or bf16 (unknown: {', '.join(unknown) or 'none'})")
    return names


def under_autocast(device: torch.device, dtype_name: str, call: Callable[[], object]) -> Callable[[], None]:
    """`call` run under torch.autocast to bf16 on the device, or as it is for fp32."""
    dtype = DTYPES[dtype_name]

    def run_call() -> None:
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            call()

    return run_call


def detector_inputs(predictor: FiberPredictor, names: list[str], size: tuple[int, int], batch: int,
                    generator: torch.Generator) -> tuple[list[PromptChunk], list[dict]]:
    """(the prompt chunks of `names`, `batch` copies of one random uint8 image of `size` (height, width) drawn from
    `generator`, prompted with them): the inputs of `predictor.model` in the detector benchmarks."""
    chunks = predictor.prompt_chunks(names)
    height, width = size
    image = torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8)
    return chunks, [{"image": image, "height": height, "width": width, "prompts": chunks}] * batch


def parameter_count(model: torch.nn.Module) -> int:
    """The number of parameters (weights) of a model."""
    return sum(parameter.numel() for parameter in model.parameters())


def run(args: argparse.Namespace, emit: Emit) -> None:
    """One row per model and dtype (ms per forward), then one summary row with the ratios (from the same run)."""
    dtypes = args.dtypes
    torch.manual_seed(args.seed)
    threads = set_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_config(args.config_file, args.opts, args.device)
    predictor, names, tokenizer_name = shapes_predictor(cfg, args.names_tokenizer)
    model = predictor.model
    generator = torch.Generator().manual_seed(args.seed)
    height, width = args.size
    chunks, inputs = detector_inputs(predictor, names, args.size, args.batch, generator)
    images: ImageList = model.preprocess_image(inputs)
    prompts = [model.pad_prompts([chunk.input_ids] * args.batch) for chunk in chunks]  # per chunk: ids, mask [B, T]
    gdino = GroundingDinoForObjectDetection(grounding_dino_config(cfg, args.queries, args.gdino_layers))
    gdino = gdino.to(device).eval()
    gdino_ids = torch.stack([grounding_dino_ids(chunk, generator) for chunk in chunks]).to(device)
    pixel_values = images.tensor[:1].expand(args.batch, -1, -1, -1).contiguous()

    def fiber_network() -> None:  # backbone, FPN and head once per chunk: no postprocessing
        for ids, mask in prompts:
            model.run_head(images, ids, mask)

    def grounding_dino() -> None:  # one forward per chunk, as ours; boxes and logits, no postprocessing
        for ids in gdino_ids:
            gdino(pixel_values=pixel_values, input_ids=ids.expand(args.batch, -1),
                  attention_mask=torch.ones_like(ids).expand(args.batch, -1))

    calls = {"fiber": lambda: model(inputs), "fiber_network": fiber_network, "grounding_dino": grounding_dino}
    variants = {f"{name}/{dtype_name}": under_autocast(device, dtype_name, call)
                for dtype_name in dtypes for name, call in calls.items()}
    logger.info("%s vs Grounding DINO (random init) on %s, %d threads: %d image(s) %dx%d (input %dx%d), %d chunk(s) "
                "of %s tokens", args.config_file, device, threads, args.batch, height, width, *pixel_values.shape[-2:],
                len(chunks), [len(chunk.input_ids) for chunk in chunks])
    times = time_variants(variants, (), args.repeats, args.warmup, device)
    ms = {name: 1e3 * statistics.median(values) for name, values in times.items()}
    common = {"bench": "latency", "model": Path(args.config_file).stem, "size": f"{height}x{width}",
              "input_size": "x".join(map(str, pixel_values.shape[-2:])), "batch": args.batch, "device": device.type,
              "threads": threads, "repeats": args.repeats, "warmup": args.warmup, "chunks": len(chunks),
              "tokens": [len(chunk.input_ids) for chunk in chunks], **code_version(), **host_load()}
    params = {"fiber": parameter_count(model), "fiber_network": parameter_count(model),
              "grounding_dino": parameter_count(gdino)}
    for name, values in times.items():
        model_name, dtype_name = name.split("/")
        emit({**common, "metric": "forward", "variant": model_name, "dtype": dtype_name,
              "params": params[model_name], "median_ms": rounded(ms[name], 2), "min_ms": rounded(1e3 * min(values), 2)})
    summary = {**common, "metric": "summary", "tokenizer": tokenizer_name, "queries": args.queries,
               "gdino_layers": args.gdino_layers}
    for dtype_name in dtypes:
        for name in ("fiber", "fiber_network"):
            summary[f"{name}_over_grounding_dino_{dtype_name}"] = rounded(
                ms[f"{name}/{dtype_name}"] / ms[f"grounding_dino/{dtype_name}"])
    if len(dtypes) == 2:
        for name in MODELS:
            summary[f"{name}_bf16_over_fp32"] = rounded(ms[f"{name}/bf16"] / ms[f"{name}/fp32"])
    emit(summary)
