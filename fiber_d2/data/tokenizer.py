"""Train small RoBERTa-compatible byte-level BPE tokenizers (for synthetic data and tests), and load tokenizers from
local directories (no model hub)."""
import json
import os
import re
from pathlib import Path
from typing import Iterable, Union

from tokenizers import AddedToken, ByteLevelBPETokenizer
from tokenizers.processors import RobertaProcessing

# RoBERTa's special tokens, in id order: <s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4.
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


def train_roberta_bpe_tokenizer(
    texts: Iterable[str],
    out_dir: Union[str, os.PathLike],
    vocab_size: int = 1000,
    min_frequency: int = 2,
    model_max_length: int = 512,
) -> Path:
    """Train a byte-level BPE on `texts` and save it as a RoBERTa tokenizer directory; returns that directory.

    The directory loads with `transformers.RobertaTokenizerFast.from_pretrained(out_dir, local_files_only=True)` (and
    `AutoTokenizer`); it has `vocab.json`, `merges.txt`, `tokenizer.json`, `tokenizer_config.json` and
    `special_tokens_map.json`. Like roberta-base: no prefix space, trimmed offsets, `<s> ... </s>` around each
    sequence, `<mask>` strips the space before it. `vocab_size` counts the 256 bytes and the 5 special tokens; it is
    an upper bound (training stops when no pair occurs `min_frequency` times). Training is deterministic.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = ByteLevelBPETokenizer(add_prefix_space=False, trim_offsets=True)
    specials = [AddedToken(token, special=True, lstrip=token == "<mask>") for token in SPECIAL_TOKENS]
    tokenizer.train_from_iterator(
        texts, vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials, show_progress=False
    )
    tokenizer.post_processor = RobertaProcessing(
        ("</s>", tokenizer.token_to_id("</s>")), ("<s>", tokenizer.token_to_id("<s>")),
        trim_offsets=True, add_prefix_space=False,
    )
    tokenizer.save_model(str(out))
    tokenizer.save(str(out / "tokenizer.json"))
    special_map = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
                   "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>"}
    config = {"tokenizer_class": "RobertaTokenizer", "model_max_length": model_max_length,
              "add_prefix_space": False, "trim_offsets": True, "errors": "replace", **special_map}
    for name, data in (("tokenizer_config.json", config), ("special_tokens_map.json", special_map)):
        (out / name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return out


def resolve_path(path: str) -> str:
    """Expand `~` and environment variables; `$DETECTRON2_DATASETS` defaults to "./datasets" as Detectron2's does."""
    env = dict(os.environ)
    env.setdefault("DETECTRON2_DATASETS", "datasets")
    expanded = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), path)
    return os.path.expanduser(expanded)


def load_tokenizer(path: str, config_key: str = "MODEL.FIBER.TOKENIZER"):
    """A RoBERTa (byte-level BPE) fast tokenizer from a local directory; nothing is downloaded."""
    from transformers import RobertaTokenizerFast

    if not path:
        raise FileNotFoundError(f"{config_key} is empty: set it to a local tokenizer directory (e.g. roberta-base)")
    directory = resolve_path(path)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"tokenizer directory {directory!r} (from {config_key} = {path!r}) does not exist")
    return RobertaTokenizerFast.from_pretrained(directory, local_files_only=True)
