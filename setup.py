"""Build hooks only; the package metadata lives in pyproject.toml.

* Ships csrc/ inside the package as ``tcod_kernels/_csrc`` so that tcod_kernels.cuda can
  JIT-compile the CUDA extension from any install.
* Builds the CUDA extension ``tcod_kernels._C`` when torch has CUDA and nvcc is found.
  ``TCOD_BUILD_CUDA=1`` forces the build (and fails loudly if it cannot), ``=0`` skips it.
  torch must be importable by the build: ``pip install --no-build-isolation .`` or
  ``python setup.py build_ext --inplace`` in an environment that has torch.
"""

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CSRC = "csrc"


class BuildPyWithSources(build_py):
    """build_py that also copies the top-level csrc/ sources into tcod_kernels/_csrc."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # editable installs read csrc/ in place
            return
        target = Path(self.build_lib) / "tcod_kernels" / "_csrc"
        target.mkdir(parents=True, exist_ok=True)
        for path in (ROOT / CSRC).iterdir():
            if path.suffix in (".cu", ".cuh", ".cpp", ".h"):
                shutil.copy2(path, target / path.name)


def _say(message):
    print(f"tcod_kernels: {message}", file=sys.stderr)


def _cuda_build_plan():
    """(build the extension?, reason when not)."""
    flag = os.environ.get("TCOD_BUILD_CUDA", "").strip()
    if flag == "0":
        return False, "TCOD_BUILD_CUDA=0"
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError as exc:
        if flag == "1":
            raise SystemExit(f"tcod_kernels: TCOD_BUILD_CUDA=1 but torch is not importable by the build ({exc}); "
                             "use pip install --no-build-isolation") from exc
        return False, "torch is not importable by the build (pip build isolation? use --no-build-isolation)"
    if flag == "1":
        return True, ""
    if torch.version.cuda is None:
        return False, "the installed torch has no CUDA"
    if CUDA_HOME is None:
        return False, "nvcc was not found (set CUDA_HOME)"
    return True, ""


def _extension_kwargs():
    build, reason = _cuda_build_plan()
    if not build:
        _say(f"installing without the CUDA extension ({reason}); "
             "it is JIT-compiled on first use where torch has CUDA and nvcc exists")
        return {}
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    sources = sorted(f"{CSRC}/{p.name}" for p in (ROOT / CSRC).iterdir() if p.suffix in (".cpp", ".cu"))
    ext = CUDAExtension(
        name="tcod_kernels._C",
        sources=sources,
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]},
    )
    _say("building the CUDA extension tcod_kernels._C")
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension, "build_py": BuildPyWithSources}}


if __name__ == "__main__":  # setuptools and pip run this file as __main__
    kwargs = _extension_kwargs()
    kwargs.setdefault("cmdclass", {"build_py": BuildPyWithSources})
    setup(**kwargs)
