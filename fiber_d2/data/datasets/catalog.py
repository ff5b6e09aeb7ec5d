"""Registration in Detectron2's DatasetCatalog/MetadataCatalog that may be repeated safely."""
from __future__ import annotations

from typing import Any, Callable

from detectron2.data import DatasetCatalog, MetadataCatalog


def register_dataset(name: str, loader: Callable[[], list[dict]], **metadata: Any) -> None:
    """Register `loader` (called only when the dataset is used) under `name` and set its metadata.

    Registering a name again replaces the earlier dataset and metadata, so registering with a new root re-points the
    datasets (Detectron2's own `DatasetCatalog.register` refuses a name twice).
    """
    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
    MetadataCatalog.pop(name, None)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)
