"""fiber_d2's model zoo: configs and shipped FIBER-Shapes weights, like `detectron2.model_zoo`."""
from .model_zoo import ZooChecksumError, get_checkpoint_path, get_config, get_config_file, list_models, sha256_of

__all__ = ["ZooChecksumError", "get_checkpoint_path", "get_config", "get_config_file", "list_models", "sha256_of"]
