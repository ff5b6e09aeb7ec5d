"""Package architecture: `import fiber_d2` registers everything; the import map has no cycle and no arrow back up; the
entry points choose loaders and evaluators by config, never by model class; config errors are one line."""
from __future__ import annotations

import ast
import graphlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from fiber_d2.config import ConfigError, add_fiber_config, load_fiber_config
from fiber_d2.data import loaders
from fiber_d2.data.datasets.from_config import register_datasets_from_config
from fiber_d2.engine.trainer import Trainer
from fiber_d2.evaluation import CaptionEvaluator, RetrievalEvaluator, build_evaluator

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "fiber_d2"

# ----- the import map -----

# Layers, lowest first: a module may import modules of its own layer or below, never above. Foundations (config keys,
# checkpoint files) < data (datasets, mappers, loaders) and the optimizers and model zoo (which read no model code) <
# modeling < evaluation (which may run a model, e.g. ITM re-ranking) < engine (trainer, predictor, hooks) < benchmark.
# The package root `fiber_d2/__init__.py` sits above all of them and nothing inside imports it.
LAYERS = {
    "config": 0,
    "checkpoint": 0,
    "data": 1,
    "solver": 1,
    "model_zoo": 1,
    "modeling": 2,
    "evaluation": 3,
    "engine": 4,
    "benchmark": 5,
}
# Inside a layer, its subpackages ranked the same way: a subpackage may import its own modules or those of a lower
# rank, never a sibling of its own rank. modeling: the fused backbone (shared) < the grounding detector and the coarse
# models, which never import each other. The layer's own `__init__.py` sits above its subpackages.
SUBLAYERS = {
    "modeling": {"backbone": 0, "grounding": 1, "coarse": 1, "image_pretraining": 1, "text_pretraining": 2},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The fiber_d2 modules `name` imports anywhere in its file (functions and TYPE_CHECKING blocks included):
    `from .x import y` counts as importing `x.y` when that is a module, else `x`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.add(submodule if submodule in modules else target)
    return {module for module in found if module in modules and module != name}


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else None


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_import_map_reads_relative_imports_as_python_does(graph):
    assert "fiber_d2.data.build" in graph["fiber_d2.data.loaders"]  # from .build import ...
    assert "fiber_d2.config" in graph["fiber_d2.data.datasets.from_config"]  # from ...config import ...
    assert "fiber_d2.modeling.backbone" in graph["fiber_d2.modeling.coarse.base"]  # from ..backbone import ...
    assert "fiber_d2.data.datasets" in graph["fiber_d2.data"]  # from . import datasets


def sublayer(module: str) -> tuple[str, int] | None:
    """(subpackage, rank) of a module inside a layer of SUBLAYERS; None for the layer's own top-level modules."""
    parts = module.split(".")
    if len(parts) > 2 and parts[1] in SUBLAYERS and parts[2] in SUBLAYERS[parts[1]]:
        return parts[2], SUBLAYERS[parts[1]][parts[2]]
    return None


def test_every_subpackage_has_a_layer():
    assert {module.split(".")[1] for module in package_modules() if "." in module} == set(LAYERS)
    for name, ranks in SUBLAYERS.items():
        subpackages = {path.parent.name for path in (PACKAGE / name).glob("*/__init__.py")}
        assert subpackages == set(ranks), name


def test_modeling_is_grouped_into_subpackages():
    top_level = {path.name for path in (PACKAGE / "modeling").glob("*.py")}
    assert top_level == {"__init__.py"}  # every model file lives in its subpackage
    assert "fiber_d2.modeling.grounding.detector" in package_modules()
    assert "fiber_d2.modeling.coarse.base" in package_modules()
    assert "fiber_d2.modeling.image_pretraining.model" in package_modules()


def test_the_import_map_has_no_cycle(graph):
    cycle = None
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        cycle = " -> ".join(e.args[1])
    assert cycle is None, f"import cycle: {cycle}"


def test_no_import_goes_up_a_layer_or_to_the_package_root(graph):
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if module != "fiber_d2" and (target == "fiber_d2" or layer(target) > layer(module))
    )
    assert upward == []


def test_no_import_goes_up_or_sideways_inside_a_layer(graph):
    """In modeling: grounding and coarse import the backbone, never each other; the backbone imports neither."""
    wrong = []
    for module, targets in graph.items():
        here = sublayer(module)
        for target in targets:
            there = sublayer(target)
            if layer(target) != layer(module) or module.split(".")[:2] != target.split(".")[:2]:
                continue  # across layers: test_no_import_goes_up_a_layer_or_to_the_package_root
            if here is None:
                continue  # the layer's own modules (its __init__.py) sit above its subpackages
            if there is None or (there[0] != here[0] and there[1] >= here[1]):
                wrong.append(f"{module} -> {target}")
    assert sorted(wrong) == []


# ----- registration on import -----

REGISTRATION_SCRIPT = """
import json, sys
import fiber_d2
from detectron2.data import DatasetCatalog
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, build_model

ours = sorted(name for name, obj in META_ARCH_REGISTRY if obj.__module__.startswith("fiber_d2."))
built = {}
for config in sys.argv[2:]:
    cfg = fiber_d2.config.load_fiber_config(config, ["MODEL.DEVICE", "cpu", "MODEL.FIBER.VQA.ANSWER_VOCABULARY", sys.argv[1]])
    model = build_model(cfg)
    built[cfg.MODEL.META_ARCHITECTURE] = {
        "class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "answers": getattr(model, "answers", None),
    }
print(json.dumps({
    "ours": ours,
    "built": built,
    "backbones": sorted(name for name, _ in BACKBONE_REGISTRY if name.startswith("build_fiber")),
    "shapes_datasets": sorted(name for name in DatasetCatalog.list() if name.startswith("fiber_shapes_"))[:3],
    "exports": [fiber_d2.add_fiber_config.__name__, fiber_d2.FiberPredictor.__name__],
}))
"""

TINY_CONFIGS = [
    "configs/fiber_shapes/fiber_tiny_grounding.yaml",
    "configs/fiber_shapes/fiber_tiny_coarse.yaml",
    "configs/fiber_shapes/fiber_tiny_vqa.yaml",
    "configs/fiber_shapes/fiber_tiny_caption.yaml",
    "configs/fiber_shapes/zoo/image_pretraining.yaml",
    "configs/fiber_shapes/zoo/text_pretraining.yaml",
]


@pytest.mark.slow
def test_import_fiber_d2_alone_registers_and_builds_every_model(tmp_path):
    from fiber_d2.data.tokenizer import train_roberta_bpe_tokenizer

    words = ["red", "blue", "circle", "square", "left", "of", "a", "the", "what", "colour", "is"]
    train_roberta_bpe_tokenizer([" ".join(words)] * 4, tmp_path / "fiber_shapes" / "tokenizer", vocab_size=300)
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps(["red", "blue", "2"]))
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path), HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-c", REGISTRATION_SCRIPT, str(answers), *TINY_CONFIGS],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["ours"] == [
        "FiberCaptionModel", "FiberCoarseModel", "FiberGroundingDetector", "FiberImagePretrainer",
        "FiberTextPretrainer", "FiberVQAModel",
    ]
    assert sorted(result["built"]) == result["ours"]  # every registered model, each from its own config
    assert all(built["class"] == name and built["parameters"] > 0 for name, built in result["built"].items())
    assert result["built"]["FiberVQAModel"]["answers"] == ["red", "blue", "2"]
    assert result["backbones"] == ["build_fiber_backbone", "build_fiber_fpn_backbone"]
    assert result["shapes_datasets"] == ["fiber_shapes_colorshape_novel", "fiber_shapes_colorshape_train",
                                         "fiber_shapes_colorshape_val"]
    assert result["exports"] == ["add_fiber_config", "FiberPredictor"]


# ----- loaders and evaluators chosen by config -----


def _cfg(**overrides) -> CfgNode:
    """Defaults + fiber_d2's keys, with KEY__SUB=value overrides."""
    cfg = get_cfg()
    add_fiber_config(cfg)
    for key, value in overrides.items():
        cfg.merge_from_list([key.replace("__", "."), value])
    return cfg


def test_every_fiber_config_names_registered_loaders():
    configs = sorted(REPO.glob("configs/**/*.yaml"))
    names = {}
    for config in configs:
        cfg = load_fiber_config(str(config))
        names.setdefault(cfg.MODEL.META_ARCHITECTURE, set()).add(cfg.INPUT.DATASET_MAPPER_NAME)
        assert loaders.loader_builders(cfg) is not None
    assert names["FiberGroundingDetector"] == {"grounding"}
    assert names["FiberCoarseModel"] == {"coarse_pretrain"}
    assert names["FiberVQAModel"] == {"coarse_vqa"}
    assert names["FiberCaptionModel"] == {"coarse_caption"}
    assert names["RetinaNet"] == {"detectron2"}


def test_a_new_mapper_name_reaches_the_trainer_without_touching_it():
    calls = []
    loaders.register_loaders(
        "test_architecture_mine", lambda cfg: calls.append(("train", cfg.SOLVER.IMS_PER_BATCH)) or "train loader",
        lambda cfg, name: calls.append(("test", name)) or "test loader",
    )
    try:
        cfg = _cfg(INPUT__DATASET_MAPPER_NAME="test_architecture_mine", SOLVER__IMS_PER_BATCH=3)
        assert Trainer.build_train_loader(cfg) == "train loader"
        assert Trainer.build_test_loader(cfg, "some_set") == "test loader"
        assert calls == [("train", 3), ("test", "some_set")]
        with pytest.raises(ValueError, match="^data loaders 'test_architecture_mine' are already registered$"):
            loaders.register_loaders("test_architecture_mine", print, print)
    finally:
        del loaders._LOADERS["test_architecture_mine"]


def test_an_unknown_mapper_name_is_a_config_error():
    with pytest.raises(ConfigError) as error:
        loaders.build_train_loader(_cfg(INPUT__DATASET_MAPPER_NAME="gronding"))
    assert str(error.value) == (
        "INPUT.DATASET_MAPPER_NAME 'gronding' is not one of "
        "['coarse_caption', 'coarse_pretrain', 'coarse_text', 'coarse_vqa', 'detectron2', 'grounding']"
    )
    with pytest.raises(ConfigError, match="'coarse_text' has no test loader: set DATASETS.TEST to"):
        loaders.build_test_loader(_cfg(INPUT__DATASET_MAPPER_NAME="coarse_text"), "fiber_shapes_pairs_val")


def test_the_task_chooses_the_evaluator_before_the_dataset_type(register, tmp_path):
    pairs = register([], evaluator_type="retrieval")
    assert type(build_evaluator(_cfg(INPUT__DATASET_MAPPER_NAME="coarse_pretrain"), pairs)) is RetrievalEvaluator
    assert type(build_evaluator(_cfg(INPUT__DATASET_MAPPER_NAME="coarse_caption"), pairs)) is CaptionEvaluator
    cfg = _cfg(INPUT__DATASET_MAPPER_NAME="coarse_caption", OUTPUT_DIR=str(tmp_path))
    evaluator = Trainer.build_evaluator(cfg, pairs)
    assert evaluator._output_dir == str(tmp_path / "inference" / pairs)


def test_itm_reranking_needs_a_model_with_an_itm_head(register):
    pairs = register([], evaluator_type="retrieval")
    cfg = _cfg(TEST__RETRIEVAL_ITM_TOP_K=5)
    with pytest.raises(ValueError) as error:
        build_evaluator(cfg, pairs, model=None)
    assert str(error.value) == (
        f"TEST.RETRIEVAL_ITM_TOP_K = 5 needs a model with an ITM head (FiberCoarseModel) to re-rank {pairs!r}, "
        "got NoneType"
    )


# ----- datasets from the config -----


def test_coco_datasets_named_in_the_config_are_registered(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    (tmp_path / "images").mkdir()
    (tmp_path / "mine.json").write_text(json.dumps({
        "images": [{"id": 7, "file_name": "a.jpg", "height": 20, "width": 30}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [1, 2, 10, 5], "iscrowd": 0, "area": 50}],
        "categories": [{"id": 3, "name": "red circle"}],
    }))
    cfg = _cfg(DATASETS__REGISTER_COCO="[['test_arch_mine', '$DETECTRON2_DATASETS/mine.json', "
                                       "'$DETECTRON2_DATASETS/images']]")
    try:
        assert register_datasets_from_config(cfg) == ["test_arch_mine"]
        metadata = MetadataCatalog.get("test_arch_mine")
        assert (metadata.evaluator_type, metadata.json_file) == ("coco", str(tmp_path / "mine.json"))
        (record,) = DatasetCatalog.get("test_arch_mine")
        assert record["file_name"] == str(tmp_path / "images" / "a.jpg")
        assert [(a["bbox"], a["category_id"]) for a in record["annotations"]] == [([1, 2, 10, 5], 0)]
        assert metadata.thing_classes == ["red circle"]
    finally:
        DatasetCatalog.remove("test_arch_mine")
        MetadataCatalog.remove("test_arch_mine")


def test_on_bad_record_skip_reaches_the_builtin_datasets(tmp_path, monkeypatch):
    """DATASETS.ON_BAD_RECORD skip re-registers the built-in datasets (here FIBER-Shapes) so their loaders skip."""
    from fiber_d2.data.datasets import DatasetFormatError, register_all_fiber_datasets

    annotations = tmp_path / "fiber_shapes" / "annotations"
    annotations.mkdir(parents=True)
    (tmp_path / "fiber_shapes" / "images" / "val").mkdir(parents=True)
    (annotations / "instances_colorshape_val.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "1.jpg", "height": 20, "width": 30},
                   {"id": 2, "file_name": "2.jpg", "height": 20, "width": 30}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 5], "iscrowd": 0, "area": 50},
                        {"id": 2, "image_id": 2, "category_id": 3, "bbox": [1, 2, -10, 5], "iscrowd": 0, "area": 50}],
        "categories": [{"id": 3, "name": "red circle"}],
    }))
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    try:
        register_all_fiber_datasets(str(tmp_path))  # as on import: bad records raise, naming the key to set
        with pytest.raises(DatasetFormatError, match="set DATASETS.ON_BAD_RECORD skip"):
            DatasetCatalog.get("fiber_shapes_colorshape_val")
        register_datasets_from_config(_cfg(DATASETS__ON_BAD_RECORD="skip"))
        records = DatasetCatalog.get("fiber_shapes_colorshape_val")
        assert [[a["bbox"] for a in r["annotations"]] for r in records if r["annotations"]] == [[[1, 2, 10, 5]]]
    finally:
        monkeypatch.undo()
        register_all_fiber_datasets(os.getenv("DETECTRON2_DATASETS", "datasets"))


@pytest.mark.parametrize(
    "value, message",
    [
        ("[['only_a_name']]", "DATASETS.REGISTER_COCO[0] must be [name, json_file, image_root] (3 non-empty strings), "
                              "got ['only_a_name']"),
        ("[['a', 'x.json', 'img'], ['a', 'y.json', 'img']]", "DATASETS.REGISTER_COCO names 'a' twice"),
    ],
)
def test_a_malformed_dataset_entry_is_a_config_error(value, message):
    with pytest.raises(ConfigError) as error:
        register_datasets_from_config(_cfg(DATASETS__REGISTER_COCO=value))
    assert str(error.value) == message


# ----- config errors in one line -----


@pytest.mark.parametrize(
    "content, message",
    [
        ("SOLVER:\n  NOPE: 1\n", "{file}: Non-existent config key: SOLVER.NOPE"),
        ("SOLVER:\n  MAX_ITER: abc\n", "{file}: Type mismatch (<class 'int'> vs. <class 'str'>) with values (40000 vs. "
                                      "abc) for config key: SOLVER.MAX_ITER"),
        ("SOLVER:\n  MAX_ITER: [1\n", "{file}: not valid YAML: while parsing a flow sequence in \"{file}\", line 2, "
                                     "column 13 expected ',' or ']', but got '<stream end>' in \"{file}\", line 3, "
                                     "column 1"),
        ("- 1\n- 2\n", "{file}: must hold a mapping of config keys, not list"),
        ("_BASE_: missing.yaml\n", "{file}: file not found: {dir}/missing.yaml"),
    ],
)
def test_config_file_errors_are_one_line(tmp_path, content, message):
    config = tmp_path / "c.yaml"
    config.write_text(content)
    with pytest.raises(ConfigError) as error:
        load_fiber_config(str(config))
    assert str(error.value) == message.format(file=config, dir=tmp_path)


def test_missing_config_file_and_bad_overrides_are_one_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("SOLVER:\n  MAX_ITER: 7\n")
    assert load_fiber_config(str(config), ["SOLVER.BASE_LR", "0.5"]).SOLVER.MAX_ITER == 7
    cases = [
        ((str(tmp_path / "none.yaml"),), f"config file '{tmp_path / 'none.yaml'}' does not exist"),
        ((str(config), ["SOLVER.NOPE", "1"]), "command-line override: Non-existent key: SOLVER.NOPE"),
        ((str(config), ["SOLVER.MAX_ITER"]), "command-line override: Override list has odd length: "
                                             "['SOLVER.MAX_ITER']; it must be a list of pairs"),
        ((str(config), ["SOLVER.MAX_ITER", "1.5"]), "command-line override: Type mismatch (<class 'int'> vs. "
                                                   "<class 'float'>) with values (7 vs. 1.5) for config key: "
                                                   "SOLVER.MAX_ITER"),
    ]
    for args, message in cases:
        with pytest.raises(ConfigError) as error:
            load_fiber_config(*args)
        assert str(error.value) == message


def test_error_line_gives_a_loader_worker_error_its_own_message():
    from fiber_d2.engine.cli import error_line

    worker = ("Caught ImageError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
              '  File "x.py", line 1, in f\n    g()\nfiber_d2.data.image_io.ImageError: dataset \'d\', file a.jpg, '
              "image_id 2: not an image")
    assert error_line(ValueError(worker)) == "dataset 'd', file a.jpg, image_id 2: not an image"
    assert error_line(ValueError("two\n  lines")) == "two lines"
