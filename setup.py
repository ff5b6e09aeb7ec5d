"""fiber_d2: FIBER (Fusion-In-the-Backbone transformER) as a Detectron2 project extension.

`pip install -e .` installs the `fiber_d2` package. Install its dependencies first (`make setup` does all of it):
detectron2 0.6 has no published wheel and is built by tools/build_detectron2.py.
"""
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithConfigs(build_py):
    """Copies `configs/` and the zoo's weights (`model_zoo/`) into `fiber_d2/model_zoo/{configs,weights}` of a built
    (non-editable) package, where `fiber_d2.model_zoo` looks first."""

    def run(self) -> None:
        super().run()
        for source, name in ((ROOT / "configs", "configs"), (ROOT / "model_zoo", "weights")):
            target = Path(self.build_lib) / "fiber_d2" / "model_zoo" / name
            if target.exists():
                shutil.rmtree(target)
            if source.is_dir():
                shutil.copytree(source, target)


setup(
    name="fiber_d2",
    version="0.1.0",
    description="FIBER (coarse-to-fine vision-language pre-training with fusion in the backbone) for Detectron2",
    python_requires=">=3.10",
    packages=find_packages(include=("fiber_d2", "fiber_d2.*")),
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "transformers>=4.40",
        "tokenizers",
        "timm>=0.9",
        "fvcore",
        "pycocotools",
        "lvis",
        "safetensors",
        "opencv-python-headless",
        "tqdm",
    ],
    package_data={"fiber_d2.model_zoo": ["manifest.json"]},
    cmdclass={"build_py": BuildPyWithConfigs},
)
