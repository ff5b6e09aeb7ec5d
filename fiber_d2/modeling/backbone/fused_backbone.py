"""FiberBackbone: Swin + RoBERTa with FIBER's fusion in their top layers, as a Detectron2 `Backbone`.

forward(images, input_ids, attention_mask, fusion) returns (image features {res3..res5: [B, C, H/s, W/s]}, text hidden
states [B, T, D]). It is two public steps:
  lower: `encode_image_lower(images)` and `encode_text_lower(ids, mask)`: the blocks/layers below the fused part,
         each independent of the other modality;
  upper: `encode_upper(image_state, text_state, fusion)`: the K fused image blocks and text layers in lock step
         (`fuse` gives their final states instead: the coarse heads read the last Swin tokens before any stage
         output LayerNorm, as FIBER's fused coarse path does).
A caller may run the lower part once and the upper part many times (many prompts for one image).
"""
from __future__ import annotations

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

from .fusion import FusionMode, run_fused_layers
from .swin import ImageState, SwinTransformer
from .swin_weights import load_swin_weights
from .text_encoder import RobertaTextEncoder, TextState

FUSION_VERSIONS = ("v2", "v3")


class FiberBackbone(Backbone):
    """Fused image-text backbone. Both encoders' top `num_fused` blocks/layers are paired bottom to top."""

    @configurable
    def __init__(
        self,
        *,
        image_encoder: SwinTransformer,
        text_encoder: RobertaTextEncoder,
        freeze_image_stages: int = 0,
        freeze_text_layers: int = 0,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        num_fused = text_encoder.num_fused
        image_fused = sum(block.i2t is not None for stage in image_encoder.layers for block in stage.blocks)
        if image_fused != num_fused:
            raise ValueError(f"the image encoder has {image_fused} fused blocks but the text encoder {num_fused}")
        expected_dims = image_encoder.feature_dims()[image_encoder.num_blocks - num_fused :]
        first_fused_layer = text_encoder.num_layers - num_fused
        actual_dims = [text_encoder.t2i[str(first_fused_layer + i)].key.in_features for i in range(num_fused)]
        if actual_dims != expected_dims:
            raise ValueError(f"text-to-image key dims {actual_dims} do not match the paired image blocks {expected_dims}")
        self.image = image_encoder
        self.text = text_encoder
        self.num_fused = num_fused
        self._out_features = list(image_encoder.out_features)
        self._out_feature_strides = {name: image_encoder.strides[name] for name in self._out_features}
        self._out_feature_channels = {
            name: image_encoder.num_features[image_encoder.stage_names.index(name)] for name in self._out_features
        }
        self.freeze(freeze_image_stages, freeze_text_layers)
        image_encoder.gradient_checkpointing = text_encoder.gradient_checkpointing = gradient_checkpointing

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec | None = None) -> dict:
        fiber = cfg.MODEL.FIBER
        if fiber.FUSION.VERSION not in FUSION_VERSIONS:
            raise ValueError(f"MODEL.FIBER.FUSION.VERSION must be one of {FUSION_VERSIONS}, got {fiber.FUSION.VERSION!r}")
        text_model = RobertaTextEncoder.load_model(
            fiber.TEXT.WEIGHTS,
            vocab_size=fiber.TEXT.VOCAB_SIZE,
            hidden_size=fiber.TEXT.HIDDEN_SIZE,
            num_hidden_layers=fiber.TEXT.NUM_LAYERS,
            num_attention_heads=fiber.TEXT.NUM_HEADS,
            intermediate_size=fiber.TEXT.INTERMEDIATE_SIZE,
            max_position_embeddings=fiber.TEXT.MAX_POSITIONS,
            hidden_dropout_prob=fiber.TEXT.DROPOUT,
            attention_probs_dropout_prob=fiber.TEXT.DROPOUT,
            type_vocab_size=1,
            layer_norm_eps=1e-5,
        )
        num_fused = fiber.FUSION.NUM_LAYERS
        image_encoder = SwinTransformer(
            embed_dim=fiber.SWIN.EMBED_DIM,
            depths=fiber.SWIN.DEPTHS,
            num_heads=fiber.SWIN.NUM_HEADS,
            window_size=fiber.SWIN.WINDOW_SIZE,
            mlp_ratio=fiber.SWIN.MLP_RATIO,
            drop_path_rate=fiber.SWIN.DROP_PATH_RATE,
            fused_blocks=num_fused,
            text_dim=text_model.config.hidden_size,
            i2t_query_norm=fiber.FUSION.VERSION == "v3",
            out_features=fiber.SWIN.OUT_FEATURES,
            unshift_single_window=fiber.SWIN.UNSHIFT_SINGLE_WINDOW,
            ape_grid=fiber.SWIN.APE_GRID,
        )
        if fiber.SWIN.WEIGHTS:
            load_swin_weights(image_encoder, fiber.SWIN.WEIGHTS)
        fused_dims = image_encoder.feature_dims()[image_encoder.num_blocks - num_fused :]
        text_encoder = RobertaTextEncoder(
            text_model,
            fused_dims,
            skip_final_norm=fiber.TEXT.SKIP_FINAL_NORM,
            position_features=fiber.FUSION.TEXT_READS_POSITIONS,
        )
        return {
            "image_encoder": image_encoder,
            "text_encoder": text_encoder,
            "freeze_image_stages": fiber.FREEZE.IMAGE_STAGES,
            "freeze_text_layers": fiber.FREEZE.TEXT_LAYERS,
            "gradient_checkpointing": fiber.GRADIENT_CHECKPOINTING,
        }

    @property
    def size_divisibility(self) -> int:
        return 32

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }

    def encode_image_lower(self, images: torch.Tensor) -> ImageState:
        """images [B, 3, H, W] -> the image state below the first fused block (text-independent)."""
        return self.image.run(self.image.embed(images), self.image.num_blocks - self.num_fused)

    def encode_text_lower(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, causal: bool = False) -> TextState:
        """input_ids, attention_mask [B, T] -> the text state below the first fused layer (image-independent)."""
        state = self.text.embed(input_ids, attention_mask, causal=causal)
        return self.text.run(state, self.text.num_layers - self.num_fused)

    def fuse(
        self, image_state: ImageState, text_state: TextState, fusion: FusionMode | str = FusionMode.ON
    ) -> tuple[ImageState, TextState]:
        """Fused top layers -> the final states: image `tokens` [B, N, C] are the last block's output (no stage
        output LayerNorm), `outputs` the normalised stage features; text `hidden` [B, T, D].

        An image state of batch 1 is shared by a text batch of any size.
        """
        return run_fused_layers(self.image, self.text, image_state, text_state, self.num_fused, fusion)

    def encode_upper(
        self, image_state: ImageState, text_state: TextState, fusion: FusionMode | str = FusionMode.ON
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Fused top layers -> (image features {name: [B, C, H, W]}, text hidden states [B, T, D]) (see `fuse`)."""
        image_state, text_state = self.fuse(image_state, text_state, fusion)
        return image_state.outputs, text_state.hidden

    def finish_image_unfused(self, image_state: ImageState) -> dict[str, torch.Tensor]:
        """The fused blocks without text (the dual encoder's image side) -> image features {name: [B, C, H, W]}."""
        return self.image.run(image_state, self.num_fused).outputs

    def finish_text_unfused(self, text_state: TextState) -> torch.Tensor:
        """The fused layers without the image (the dual encoder's text side) -> text hidden states [B, T, D]."""
        return self.text.run(text_state, self.num_fused).hidden

    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        fusion: FusionMode | str = FusionMode.ON,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """images [B, 3, H, W] (any H, W); input_ids/attention_mask [B, T] -> (image features, text hidden states)."""
        image_state = self.encode_image_lower(images)
        text_state = self.encode_text_lower(input_ids, attention_mask)
        return self.encode_upper(image_state, text_state, fusion)

    def freeze(self, image_stages: int, text_layers: int) -> None:
        """Stop gradients to the patch embedding + first `image_stages` Swin stages and to the text embeddings +
        first `text_layers` layers (0: nothing; -1: the whole encoder, fusion included)."""
        frozen: list[nn.Module] = []
        if image_stages:
            stages = len(self.image.layers) if image_stages < 0 else image_stages
            frozen += [self.image.patch_embed, *self.image.layers[:stages]]
            if image_stages < 0:
                frozen.append(self.image.out_norms)
        if text_layers:
            layers = self.text.num_layers if text_layers < 0 else text_layers
            frozen += [self.text.model.embeddings, *self.text.model.encoder.layer[:layers]]
            if text_layers < 0:
                frozen.append(self.text.t2i)
        for module in frozen:
            for parameter in module.parameters():
                parameter.requires_grad_(False)


@BACKBONE_REGISTRY.register()
def build_fiber_backbone(cfg: CfgNode, input_shape: ShapeSpec | None = None) -> FiberBackbone:
    """MODEL.BACKBONE.NAME = "build_fiber_backbone"."""
    return FiberBackbone(cfg, input_shape)
