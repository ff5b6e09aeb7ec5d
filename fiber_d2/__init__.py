"""fiber_d2: FIBER (Fusion-In-the-Backbone transformER, Dou et al., NeurIPS 2022) for Detectron2.

`import fiber_d2` registers everything, as Detectron2's projects do: the models (META_ARCH_REGISTRY) and backbones
(BACKBONE_REGISTRY), the datasets (DatasetCatalog/MetadataCatalog, under $DETECTRON2_DATASETS) and the data loaders
of INPUT.DATASET_MAPPER_NAME. `add_fiber_config` adds fiber_d2's config keys; `FiberPredictor` is the prompt API.
"""
import warnings

# fvcore (imported by Detectron2) calls the deprecated torch.jit.script when imported: a FutureWarning on every command
# that a user cannot act on. Only that message is silenced.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

from . import data, modeling  # noqa: E402,F401  (registration on import)
from .config import add_fiber_config  # noqa: E402
from .engine.predictor import FiberPredictor  # noqa: E402

__version__ = "0.1.0"

__all__ = ["FiberPredictor", "__version__", "add_fiber_config"]
