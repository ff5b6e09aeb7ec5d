"""Build and install detectron2 0.6 from the ``pb1-detectron2==0.6`` sdist, without compiled ops.

The package registry has no detectron2 wheel, only that sdist (detectron2 0.6's Python sources). This script:

1. downloads the sdist with the running interpreter's pip (its metadata step imports torch, so it must run
   inside the venv that already has torch),
2. removes the C++/CUDA extension from its ``setup.py``,
3. adds ``detectron2/_C.py``, a stand-in whose attribute access raises an error naming the missing compiled op,
4. installs it with ``pip install --no-build-isolation`` under the given constraints file.

fiber_d2 uses torchvision's ops (nms, deform_conv2d, roi_align) instead of detectron2's compiled ones.
Usage: ``python tools/build_detectron2.py [--constraints constraints.txt] [--cache .cache/detectron2]``.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
from pathlib import Path

SDIST = "pb1-detectron2==0.6"
SDIST_FILE = "pb1-detectron2-0.6.tar.gz"
EXTENSION_LINES = ("ext_modules=get_extensions(),", 'cmdclass={"build_ext": torch.utils.cpp_extension.BuildExtension},')

C_STANDIN = '''"""Stand-in for detectron2's compiled extension, which this build does not include (see fiber_d2's Makefile).

Every compiled op is absent; fiber_d2 uses torchvision.ops (nms, deform_conv2d, roi_align) instead. The build-info
functions that `detectron2.utils.collect_env` calls answer that nothing was compiled.
"""


def get_compiler_version() -> str:
    return "none (detectron2 built without its C++/CUDA extension)"


def get_cuda_version() -> str:
    return "none (detectron2 built without its C++/CUDA extension)"


def has_cuda() -> bool:
    return False


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    raise RuntimeError(
        f"detectron2._C.{name} is a compiled detectron2 op, and this detectron2 was built without its C++/CUDA "
        "extension (from the pb1-detectron2==0.6 sdist). Use the torchvision.ops equivalent, or, for COCOEvaluator, "
        "pass use_fast_impl=False."
    )
'''


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.check_call(cmd)


def patch_sources(src: Path) -> None:
    """Drop the extension from setup.py and add the ``_C`` stand-in (idempotent)."""
    setup_py = src / "setup.py"
    lines = setup_py.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.strip() not in EXTENSION_LINES]
    removed = len(lines) - len(kept)
    if removed not in (0, len(EXTENSION_LINES)):
        sys.exit(f"{setup_py}: expected to remove {len(EXTENSION_LINES)} extension lines, removed {removed}")
    setup_py.write_text("".join(kept))
    (src / "detectron2" / "_C.py").write_text(C_STANDIN)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--constraints", default="constraints.txt", help="pip constraints file for its dependencies")
    parser.add_argument("--cache", default=".cache/detectron2", help="where the sdist is downloaded and unpacked")
    args = parser.parse_args()

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / SDIST_FILE
    pip = [sys.executable, "-m", "pip"]
    if not archive.exists():
        run(pip + ["download", "-q", "--no-deps", "--no-build-isolation", SDIST, "-d", str(cache)])
    src = cache / SDIST_FILE.removesuffix(".tar.gz")
    if not src.exists():
        with tarfile.open(archive) as tar:
            tar.extractall(cache, filter="data")
    patch_sources(src)
    run(pip + ["install", "-q", "--no-build-isolation", "-c", args.constraints, str(src)])


if __name__ == "__main__":
    main()
