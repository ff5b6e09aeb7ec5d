"""Datasets, formats, prompts and data mappers."""
from . import datasets  # noqa: F401  (importing the package registers the datasets)
from .build import (
    build_coarse_test_loader,
    build_coarse_train_loader,
    build_grounding_test_loader,
    build_grounding_train_loader,
    load_grounding_dataset_dicts,
)
from .coarse_mapper import CoarseDatasetMapper, build_answer_vocabulary, mask_tokens
from .grounding_mapper import GroundingDatasetMapper, swap_left_right
from .loaders import build_test_loader, build_train_loader, register_loaders
from .positive_map import PromptError, char_spans_to_token_map, encode_prompt
from .prompts import (
    PromptChunk,
    clean_category_name,
    detection_prompt,
    training_detection_prompt,
    vocabulary_chunks,
)
from .tokenizer import load_tokenizer

__all__ = [
    "CoarseDatasetMapper",
    "GroundingDatasetMapper",
    "PromptChunk",
    "PromptError",
    "build_answer_vocabulary",
    "build_coarse_test_loader",
    "build_coarse_train_loader",
    "build_grounding_test_loader",
    "build_grounding_train_loader",
    "build_test_loader",
    "build_train_loader",
    "char_spans_to_token_map",
    "clean_category_name",
    "detection_prompt",
    "encode_prompt",
    "load_grounding_dataset_dicts",
    "load_tokenizer",
    "mask_tokens",
    "register_loaders",
    "swap_left_right",
    "training_detection_prompt",
    "vocabulary_chunks",
]
