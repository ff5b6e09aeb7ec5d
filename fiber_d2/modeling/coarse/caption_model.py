"""FiberCaptionModel: image captioning on FIBER's backbone (docs/FIBER_DETAILS.md; registered in
META_ARCH_REGISTRY).

The image runs with fusion off; the text stack is a causal decoder (`encode_text_lower(..., causal=True)`) whose fused
layers cross-attend to the image as in FusionMode.TEXT_TO_IMAGE: each fused text layer reads the image tokens entering
its paired Swin block. Those tokens do not depend on the text, so `encode_images` computes them once per image and
every decoding step reuses them. Next-token logits come from the MLM head on the fused text projection
(`heads.mlm_logits`, as FIBER's objectives.py `compute_caption_mle`). The decoder is not a fused pass (FusionMode.ON),
so its last layer keeps its output LayerNorm whatever MODEL.FIBER.TEXT.SKIP_FINAL_NORM says, as FIBER's
`infer_caption`.

Training (inputs from `CoarseDatasetMapper`, task "caption": `image` [3, S, S], `input_ids` [T] = <s> caption </s>):
  loss_caption  mean CE of next-token prediction over the real tokens (`caption_loss`).
Inference returns per image {"image_id", "caption"}: greedy decoding (MODEL.FIBER.CAPTION.BEAM_SIZE 1) or beam search,
from <s> and MODEL.FIBER.CAPTION.PROMPT's tokens (none by default, as FIBER; BLIP's "a picture of " is one) until </s>
or MODEL.FIBER.CAPTION.MAX_LENGTH generated tokens, decoded without special tokens, the prompt included. Special
tokens other than </s> are never generated.

Beam search (`beam_search`) keeps the k best live hypotheses by total log-probability. Each step extends every live
hypothesis by every token and keeps the (beam size - finished) best extensions; an extension ending in </s> is
finished, and after MAX_LENGTH steps the live ones finish too. The caption is the finished hypothesis with the best
length-normalised score, total log-probability / generated tokens (</s> included). With beam size 1 this is greedy.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ...data.tokenizer import load_tokenizer
from ..backbone import FiberBackbone
from .base import CoarseModelBase, build_coarse_heads, build_coarse_backbone
from .heads import CoarseHeads


class Caption(NamedTuple):
    """A decoded caption: `tokens`, the ids after <s> (the prompt's, then the generated ones, </s> last if it was
    generated), and `score`, the generated tokens' total log-probability / their number."""

    tokens: list[int]
    score: float


def caption_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """logits [B, T, V] of the decoder, input_ids / attention_mask [B, T] -> mean CE of predicting token t + 1 from
    position t, over the pairs whose token t + 1 is real (attention_mask 1)."""
    if logits.shape[:2] != input_ids.shape or input_ids.shape != attention_mask.shape:
        raise ValueError(
            f"caption logits {tuple(logits.shape)}, input_ids {tuple(input_ids.shape)} and attention_mask "
            f"{tuple(attention_mask.shape)} must share [batch, tokens]"
        )
    targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
    if not (targets != -100).any():
        raise ValueError("the captions have no token to predict (each needs <s> and at least one more token)")
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100)


@META_ARCH_REGISTRY.register()
class FiberCaptionModel(CoarseModelBase):
    """Unfused image encoder + causal text decoder cross-attending to it; next-token CE in training, greedy decoding
    or beam search at inference."""

    @configurable
    def __init__(
        self,
        *,
        backbone: FiberBackbone,
        heads: CoarseHeads,
        tokenizer: Any,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        beam_size: int = 5,
        max_length: int = 50,
        prompt: str = "",
    ) -> None:
        """
        Args:
            tokenizer: the RoBERTa tokenizer of the text encoder (decodes the captions; gives <s>, </s>, <pad>).
            beam_size: beams at inference, 1 = greedy. max_length: the most tokens generated after <s> and the
                prompt, </s> included.
            prompt: text every caption starts with at inference (BLIP's "a picture of "); "" = none, as FIBER. It
                is part of the returned caption, and its tokens do not count in the score.
        """
        super().__init__(backbone, heads, pixel_mean, pixel_std, tokenizer.pad_token_id, needs_image_output=False)
        text_config = backbone.text.model.config
        if backbone.num_fused < 1:
            raise ValueError("captioning needs fused text layers to read the image: MODEL.FIBER.FUSION.NUM_LAYERS >= 1")
        if beam_size < 1:
            raise ValueError(f"MODEL.FIBER.CAPTION.BEAM_SIZE must be at least 1, got {beam_size}")
        positions = text_config.max_position_embeddings - text_config.pad_token_id - 1
        if not 1 <= max_length < positions:
            raise ValueError(
                f"MODEL.FIBER.CAPTION.MAX_LENGTH must be in [1, {positions - 1}] (<s> + the caption fit the "
                f"{positions} positions of MODEL.FIBER.TEXT.MAX_POSITIONS), got {max_length}"
            )
        if tokenizer.pad_token_id != text_config.pad_token_id or len(tokenizer) > text_config.vocab_size:
            raise ValueError(
                f"the tokenizer (pad id {tokenizer.pad_token_id}, {len(tokenizer)} tokens) does not fit the text "
                f"encoder (pad id {text_config.pad_token_id}, MODEL.FIBER.TEXT.VOCAB_SIZE {text_config.vocab_size})"
            )
        self.tokenizer = tokenizer
        self.beam_size = beam_size
        self.max_length = max_length
        prompt_ids = tokenizer(prompt.strip(), add_special_tokens=False)["input_ids"] if prompt.strip() else []
        if max_length + len(prompt_ids) >= positions:
            raise ValueError(
                f"MODEL.FIBER.CAPTION.PROMPT ({len(prompt_ids)} tokens) + MAX_LENGTH {max_length} exceed the "
                f"{positions - 1} positions after <s>"
            )
        self.bos_token_id = tokenizer.bos_token_id
        self.eos_token_id = tokenizer.eos_token_id
        # Never generated: special tokens but </s>, and ids past the tokenizer's (the model's vocabulary may be larger).
        banned = sorted(set(tokenizer.all_special_ids) - {self.eos_token_id}) + list(
            range(len(tokenizer), text_config.vocab_size)
        )
        self.register_buffer("banned_tokens", torch.tensor(banned, dtype=torch.long), False)
        self.register_buffer("start_ids", torch.tensor([self.bos_token_id] + prompt_ids, dtype=torch.long), False)
        # Never read: the image-to-text attention, the last Swin block (no text layer reads its output), the stage
        # output norms and the pooled heads (the fused text projection feeds the MLM head).
        image, fused = backbone.image, heads.fused
        unused = [fused.image_transform, fused.image_pooler, fused.text_pooler, heads.itc, heads.itm, heads.temperature]
        unused += [image.out_norms, image.layers[-1].blocks[-1]]
        unused += [block.i2t for stage in image.layers for block in stage.blocks if block.i2t is not None]
        if heads.vqa is not None:
            unused.append(heads.vqa)
        self.freeze_unused(unused)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        backbone = build_coarse_backbone(cfg, cls.__name__)
        return {
            "backbone": backbone,
            "heads": build_coarse_heads(cfg, backbone),
            "tokenizer": load_tokenizer(cfg.MODEL.FIBER.TOKENIZER),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "beam_size": cfg.MODEL.FIBER.CAPTION.BEAM_SIZE,
            "max_length": cfg.MODEL.FIBER.CAPTION.MAX_LENGTH,
            "prompt": cfg.MODEL.FIBER.CAPTION.PROMPT,
        }

    def encode_images(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Normalised images [B, 3, S, S], fusion off -> the tokens entering each fused Swin block, bottom to top: K
        tensors [B, N_k, C_k] (what the paired text layers attend to)."""
        state = self.backbone.encode_image_lower(images)
        tokens = [state.tokens]
        for _ in range(self.backbone.num_fused - 1):
            state = self.backbone.image.step(state)
            tokens.append(state.tokens)
        return tokens

    def decoder_logits(
        self, image_tokens: Sequence[torch.Tensor], input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """`encode_images` output (batch 1 or B) + input_ids / attention_mask [B, T] -> next-token logits [B, T, V];
        position t sees tokens 0..t only."""
        state = self.backbone.encode_text_lower(input_ids, attention_mask, causal=True)
        for tokens in image_tokens:
            state = self.backbone.text.step(state, image=tokens.expand(input_ids.shape[0], -1, -1))
        return self.heads.mlm_logits(state.hidden)

    def next_token_log_probs(self, image_tokens: Sequence[torch.Tensor], input_ids: torch.Tensor) -> torch.Tensor:
        """Prefixes [B, L] (padding only after a finished caption) -> log-probabilities [B, V] of the token after
        each, special tokens other than </s> excluded (-inf)."""
        logits = self.decoder_logits(image_tokens, input_ids, (input_ids != self.pad_token_id).long())[:, -1]
        return logits.float().index_fill(1, self.banned_tokens, float("-inf")).log_softmax(dim=-1)

    def greedy(self, image_tokens: Sequence[torch.Tensor]) -> list[Caption]:
        """Greedy decoding of each image of `encode_images`' batch, after <s> and the prompt."""
        batch, start = image_tokens[0].shape[0], len(self.start_ids)
        input_ids = self.start_ids.expand(batch, -1)
        total = torch.zeros(batch, device=self.device)
        lengths = torch.zeros(batch, dtype=torch.long, device=self.device)
        done = torch.zeros(batch, dtype=torch.bool, device=self.device)
        for _ in range(self.max_length):
            best, token = self.next_token_log_probs(image_tokens, input_ids).max(dim=-1)
            total += best.masked_fill(done, 0.0)
            lengths += (~done).long()
            input_ids = torch.cat([input_ids, token.masked_fill(done, self.pad_token_id)[:, None]], dim=1)
            done |= token == self.eos_token_id
            if done.all():
                break
        return [
            Caption(input_ids[i, 1 : start + lengths[i]].tolist(), (total[i] / lengths[i]).item()) for i in range(batch)
        ]

    def beam_search(self, image_tokens: Sequence[torch.Tensor], beam_size: int) -> list[Caption]:
        """Beam search (module docstring) for each image of `encode_images`' batch. The images keep their own beams;
        each step runs the decoder once on the live hypotheses of every image."""
        batch = len(image_tokens[0])
        live = [self.start_ids[None] for _ in range(batch)]  # per image: its live hypotheses [k_i, L]
        live_total = [torch.zeros(1, device=self.device) for _ in range(batch)]
        finished: list[list[Caption]] = [[] for _ in range(batch)]
        for step in range(1, self.max_length + 1):
            running = [i for i in range(batch) if len(live[i])]
            if not running:
                break
            counts = [len(live[i]) for i in running]
            owner = torch.tensor([i for i, count in zip(running, counts) for _ in range(count)], device=self.device)
            prefixes = torch.cat([live[i] for i in running])
            log_probs = self.next_token_log_probs([t[owner] for t in image_tokens], prefixes)
            for i, rows in zip(running, log_probs.split(counts)):  # rows [k_i, V]: image i's live hypotheses
                totals, index = (live_total[i][:, None] + rows).flatten().topk(beam_size - len(finished[i]))
                beams, tokens = index // rows.shape[1], index % rows.shape[1]
                candidates = torch.cat([live[i][beams], tokens[:, None]], dim=1)
                ended = tokens == self.eos_token_id
                finished[i] += [
                    Caption(ids[1:].tolist(), t.item() / step) for ids, t in zip(candidates[ended], totals[ended])
                ]
                live[i], live_total[i] = candidates[~ended], totals[~ended]
        captions = []
        for i in range(batch):
            finished[i] += [
                Caption(ids[1:].tolist(), t.item() / self.max_length) for ids, t in zip(live[i], live_total[i])
            ]
            captions.append(max(finished[i], key=lambda caption: caption.score))
        return captions

    def generate(self, images: torch.Tensor, beam_size: int | None = None) -> list[Caption]:
        """Normalised images [B, 3, S, S] -> a caption each, by beam search (`beam_size`, default the model's; 1 =
        greedy)."""
        beam_size = self.beam_size if beam_size is None else beam_size
        image_tokens = self.encode_images(images)
        return self.greedy(image_tokens) if beam_size == 1 else self.beam_search(image_tokens, beam_size)

    def forward(self, batched_inputs: Sequence[dict]) -> dict[str, torch.Tensor] | list[dict[str, Any]]:
        if not self.training:
            return self.inference(batched_inputs)
        missing = [i for i, x in enumerate(batched_inputs) if "input_ids" not in x or "image" not in x]
        if missing:
            raise ValueError(
                f"caption training inputs {missing} lack 'image' or 'input_ids' (use CoarseDatasetMapper, task "
                "'caption')"
            )
        input_ids, mask = self.pad_texts([x["input_ids"] for x in batched_inputs])
        logits = self.decoder_logits(self.encode_images(self.preprocess_images(batched_inputs)), input_ids, mask)
        return {"loss_caption": caption_loss(logits, input_ids, mask)}

    @torch.no_grad()
    def inference(self, batched_inputs: Sequence[dict]) -> list[dict[str, Any]]:
        """Per image: {"image_id", "caption": str}."""
        missing = [i for i, x in enumerate(batched_inputs) if "image_id" not in x or "image" not in x]
        if missing:
            raise ValueError(
                f"caption inputs {missing} lack 'image' or 'image_id' (CoarseDatasetMapper, task 'caption')"
            )
        captions = self.generate(self.preprocess_images(batched_inputs))
        return [
            {"image_id": x["image_id"], "caption": self.tokenizer.decode(c.tokens, skip_special_tokens=True).strip()}
            for x, c in zip(batched_inputs, captions)
        ]
