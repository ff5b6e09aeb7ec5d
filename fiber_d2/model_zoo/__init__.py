"""fiber_d2's model zoo: configs and shipped FIBER-Shapes weights, like `detectron2.model_zoo`."""
from .model_zoo import (
    ZooChecksumError,
    get_checkpoint_path,
    get_config,
    get_config_file,
    get_model_files,
    list_models,
    record_metrics,
    sha256_of,
    write_manifest,
)

__all__ = [
    "ZooChecksumError", "get_checkpoint_path", "get_config", "get_config_file", "get_model_files", "list_models",
    "record_metrics", "sha256_of", "write_manifest",
]
