"""FIBER's fusion in the backbone: gated cross-attention in the top layers of both encoders, updated in parallel.

In each of the top K fused steps, the image block's self-attention output x~ gets `alpha_i2t * CrossAttn(x~, text)`
added (image queries attend to every text token), and the text layer's self-attention output gets
`alpha_t2i * CrossAttn(a, image)` added (text queries attend to every image token of the paired stage). Both gates
are scalars initialised to 0, so a fresh model is exactly the two unimodal encoders. Both sides read the *other*
stream's state from before the step (co-attention), then both are replaced.

The gated cross-attentions are `attention.ImageToTextAttention` (in each fused Swin block) and
`attention.TextToImageAttention` (in each fused text layer); `run_fused_layers` steps both encoders.

Fusion modes per call (`FusionMode`):
  ON             both cross-attentions (the fused model: MLM, ITM, grounding); the only mode in which the text
                 encoder's `skip_final_norm` applies;
  OFF            no cross input at all: two independent encoders (the dual encoder for ITC and retrieval);
  TEXT_TO_IMAGE  text attends to the image, the image stream runs unfused (captioning). Each fused text layer reads
                 the tokens entering its paired image block, as in the fused model (FIBER's released captioning
                 model instead lets every fused layer read the final Swin tokens).
"""
from __future__ import annotations

import enum

from .swin import ImageState, SwinTransformer
from .text_encoder import RobertaTextEncoder, TextState


class FusionMode(str, enum.Enum):
    """How the fused top layers run in one forward call."""

    ON = "on"
    OFF = "off"
    TEXT_TO_IMAGE = "text_to_image"


def _match_batch(image_state: ImageState, text_state: TextState) -> ImageState:
    """Repeat a single image's state for a batch of prompts (many prompts, one image)."""
    image_batch, text_batch = image_state.tokens.shape[0], text_state.hidden.shape[0]
    if image_batch == text_batch:
        return image_state
    if image_batch == 1:
        return image_state.expand(text_batch)
    raise ValueError(f"image batch {image_batch} and text batch {text_batch} differ (only 1 image may be shared)")


def run_fused_layers(
    image_encoder: SwinTransformer,
    text_encoder: RobertaTextEncoder,
    image_state: ImageState,
    text_state: TextState,
    num_fused: int,
    mode: FusionMode,
) -> tuple[ImageState, TextState]:
    """Run the top `num_fused` image blocks and text layers in lock step; returns the final states.

    Inputs must stand right below the fused part (see FiberBackbone.encode_image_lower / encode_text_lower);
    they are not modified, so one lower part can feed many upper parts.
    """
    mode = FusionMode(mode)
    image_state = _match_batch(image_state, text_state)
    for _ in range(num_fused):
        image_in, text_in = image_state, text_state
        image_state = image_encoder.step(
            image_in,
            text=text_in.hidden if mode is FusionMode.ON else None,
            text_bias=text_in.bias,
        )
        text_state = text_encoder.step(
            text_in,
            image=image_in.tokens if mode is not FusionMode.OFF else None,
            fused_pass=mode is FusionMode.ON,
            image_size=image_in.size,
        )
    return image_state, text_state
