"""RoBERTa text encoder built from Hugging Face's modules, run one layer at a time.

The embeddings and every layer's weights are those of `transformers.RobertaModel` (so `roberta-base` loads with
`from_pretrained`, and the official FIBER keys `language_backbone.body.model.*` map one to one onto `model.*`). The
layer forward is ours, through scaled_dot_product_attention, because FIBER inserts the gated text-to-image attention
between the self-attention output projection and its residual LayerNorm:

    a = Dropout(Dense(SelfAttn(h))); a = a + alpha_t2i * CrossAttn(a, image); h = LN(a + h); h = FFN(h)
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import RobertaConfig, RobertaModel

from .attention import TextToImageAttention, multi_head_attention, padding_bias


@dataclasses.dataclass(frozen=True)
class TextState:
    """The text stream between two layers.

    hidden: [B, T, D]; attention_mask: [B, T] (1 = token, 0 = padding); bias: [B, 1, T or 1, T] additive attention
    bias (padding, plus the causal triangle for decoding); layer: index of the next layer.
    """

    hidden: torch.Tensor
    attention_mask: torch.Tensor
    bias: torch.Tensor
    layer: int

    def select(self, index: torch.Tensor) -> "TextState":
        """The state of samples `index` [P] (a sample may repeat)."""
        return dataclasses.replace(
            self, hidden=self.hidden[index], attention_mask=self.attention_mask[index], bias=self.bias[index]
        )


def pad_text_states(states: Sequence[TextState]) -> TextState:
    """Text states of prompts at the same layer, [1 or B_i, T_i, D] each -> one state [sum B_i, max T_i, D].

    Padding positions get zero hidden states, attention mask 0 and the most negative bias, as the padding tokens of
    a batch padded before the embeddings: they are masked as keys everywhere, so the real tokens' results do not
    change. Only padding biases [B, 1, 1, T] can be padded (not the causal ones of decoding).
    """
    if not states:
        raise ValueError("pad_text_states needs at least one text state")
    layers = {state.layer for state in states}
    if len(layers) != 1:
        raise ValueError(f"text states of different layers {sorted(layers)} cannot be batched")
    causal = [i for i, state in enumerate(states) if state.bias.shape[-2] != 1]
    if causal:
        raise ValueError(f"text states {causal} carry a causal bias; only padding biases [B, 1, 1, T] can be padded")
    length = max(state.hidden.shape[1] for state in states)
    hidden, mask, bias = [], [], []
    for state in states:
        extra = length - state.hidden.shape[1]
        hidden.append(F.pad(state.hidden, (0, 0, 0, extra)))
        mask.append(F.pad(state.attention_mask, (0, extra)))
        bias.append(F.pad(state.bias, (0, extra), value=torch.finfo(state.bias.dtype).min))
    return TextState(torch.cat(hidden), torch.cat(mask), torch.cat(bias), layers.pop())


class RobertaTextEncoder(nn.Module):
    """RoBERTa whose top `len(fused_image_dims)` layers carry a `TextToImageAttention` (keys `t2i.<layer index>`).

    fused_image_dims: channels of the image tokens each fused layer attends to, bottom to top.
    skip_final_norm: leave out the last layer's output LayerNorm in fused passes (`step(..., fused_pass=True)`), as
        FIBER's coarse stage does in its fused loop (coarse_grained/fiber/modules/fiber_module.py, `infer`); its
        text-only path and its caption decoder keep that LayerNorm.
    position_features: P > 0 gives each text-to-image attention the image tokens' positions (see
        TextToImageAttention; not in FIBER).
    """

    def __init__(
        self,
        model: RobertaModel,
        fused_image_dims: Sequence[int] = (),
        skip_final_norm: bool = False,
        position_features: int = 0,
    ):
        super().__init__()
        config = model.config
        num_layers = config.num_hidden_layers
        if len(fused_image_dims) > num_layers:
            raise ValueError(f"{len(fused_image_dims)} fused layers requested but the text model has {num_layers}")
        self.model = model
        self.num_heads = config.num_attention_heads
        self.hidden_size = config.hidden_size
        self.skip_final_norm = skip_final_norm
        self.gradient_checkpointing = False  # recompute each layer in the backward pass (saves activation memory)
        first_fused = num_layers - len(fused_image_dims)
        self.t2i = nn.ModuleDict(
            {
                str(first_fused + i): TextToImageAttention(
                    config.hidden_size,
                    config.num_attention_heads,
                    image_dim,
                    attention_dropout=config.attention_probs_dropout_prob,
                    dropout=config.hidden_dropout_prob,
                    position_features=position_features,
                )
                for i, image_dim in enumerate(fused_image_dims)
            }
        )
        for module in self.t2i.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=config.initializer_range)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for attention in self.t2i.values():
            if attention.position_kv is not None:
                nn.init.zeros_(attention.position_kv.weight)  # the positions start with no effect

    @staticmethod
    def load_model(path: str = "", **dims) -> RobertaModel:
        """A RobertaModel (no pooler): from a local Hugging Face directory, or randomly initialised from `dims`.

        dims: RobertaConfig arguments (vocab_size, hidden_size, num_hidden_layers, ...), used when `path` is empty.
        Never downloads: `path` must be a directory with config.json and the weights.
        """
        if not path:
            return RobertaModel(RobertaConfig(**dims), add_pooling_layer=False)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(
                f"text model directory {path!r} has no config.json; give a local Hugging Face RoBERTa directory "
                "(e.g. one saved with RobertaModel.save_pretrained)"
            )
        return RobertaModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False)

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def num_fused(self) -> int:
        return len(self.t2i)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, causal: bool = False) -> TextState:
        """input_ids, attention_mask: [B, T] -> the state before layer 0. `causal` masks future tokens (decoding)."""
        if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape:
            raise ValueError(
                f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} must both be "
                "[batch, tokens]"
            )
        config = self.model.config
        limit = config.max_position_embeddings - config.pad_token_id - 1  # RoBERTa positions start after padding
        if input_ids.shape[1] > limit:
            raise ValueError(
                f"a prompt of {input_ids.shape[1]} tokens is longer than the text encoder's {limit} positions "
                "(MODEL.FIBER.TEXT.MAX_POSITIONS); split long prompts into chunks"
            )
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= config.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {config.vocab_size}) (the text encoder's vocabulary), got "
                f"[{int(input_ids.min())}, {int(input_ids.max())}]: is the tokenizer the one the model was built for?"
            )
        hidden = self.model.embeddings(input_ids=input_ids)
        bias = padding_bias(attention_mask, hidden.dtype)
        if causal:
            length = input_ids.shape[1]
            future = torch.ones(length, length, dtype=torch.bool, device=hidden.device).triu(1)
            bias = torch.where(future, torch.finfo(hidden.dtype).min, bias)
        return TextState(hidden, attention_mask, bias, 0)

    def step(
        self,
        state: TextState,
        image: torch.Tensor | None = None,
        fused_pass: bool = False,
        image_size: tuple[int, int] | None = None,
    ) -> TextState:
        """Run the next layer; `image` [B, N, C] feeds its text-to-image attention (fused layers only), image_size its
        (H, W) token grid.

        fused_pass: this step belongs to a pass with both cross-attentions (FusionMode.ON), where `skip_final_norm`
        applies.
        """
        index = state.layer
        if index >= self.num_layers:
            raise RuntimeError("every text layer has already run")
        if image is not None and str(index) not in self.t2i:
            raise ValueError(f"image tokens were given to text layer {index}, which is not fused")
        output_norm = not (fused_pass and self.skip_final_norm and index == self.num_layers - 1)
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            hidden = checkpoint(
                self._layer_forward,
                index,
                state.hidden,
                state.bias,
                image,
                output_norm,
                image_size,
                use_reentrant=False,
            )
        else:
            hidden = self._layer_forward(index, state.hidden, state.bias, image, output_norm, image_size)
        return dataclasses.replace(state, hidden=hidden, layer=index + 1)

    def _layer_forward(
        self,
        index: int,
        hidden: torch.Tensor,
        bias: torch.Tensor,
        image: torch.Tensor | None,
        output_norm: bool,
        image_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        layer = self.model.encoder.layer[index]
        self_attention, self_output = layer.attention.self, layer.attention.output
        attended = multi_head_attention(
            self_attention.query(hidden),
            self_attention.key(hidden),
            self_attention.value(hidden),
            self.num_heads,
            bias=bias,
            dropout_p=self_attention.dropout.p if self.training else 0.0,
        )
        a = self_output.dropout(self_output.dense(attended))
        if image is not None:
            a = self.t2i[str(index)](a, image, image_size)
        hidden = self_output.LayerNorm(a + hidden)
        intermediate = layer.intermediate(hidden)
        if not output_norm:
            return layer.output.dropout(layer.output.dense(intermediate)) + hidden
        return layer.output(intermediate, hidden)

    def run(self, state: TextState, num_layers: int) -> TextState:
        """Run `num_layers` more layers without image input."""
        for _ in range(num_layers):
            state = self.step(state)
        return state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unfused text encoder: [B, T] ids and mask -> [B, T, D] hidden states."""
        return self.run(self.embed(input_ids, attention_mask), self.num_layers).hidden
