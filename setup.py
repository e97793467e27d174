"""Builds the Python package fusedadam: fusedadam.torch and its C++ extension fusedadam._C, a thin
binding over the C library that the Makefile builds (build/libfusedadam.a; the kernels stay in
kernels/). The extension is compiled against the torch that is installed, so build without isolation:

    pip install --no-build-isolation .        (or -e . for an editable install)

CUDA_HOME (default: the toolkit of the nvcc on PATH, else /usr/local/cuda) names the toolkit: its
headers, and its static CUDA runtime, which is linked into the extension with its symbols hidden so that
it cannot clash with torch's own. The extension then needs a driver that runs that toolkit's runtime
(CUDA 13: 580 or newer).

Without a CUDA toolkit (no CUDA_HOME/bin/nvcc), or with FADAM_CPU_ONLY=1, the CPU-only extension is
built instead: the library from csrc/ alone (make cpu-only, no nvcc), no CUDA library linked, so it also
works with a CPU-only torch; CUDA tensors are refused with a message saying so.
"""
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def default_cuda_home():
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else "/usr/local/cuda"


CUDA_HOME = os.environ.get("CUDA_HOME") or default_cuda_home()
CPU_ONLY = os.environ.get("FADAM_CPU_ONLY") == "1" or not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
STATIC_LIB = os.path.join("build", "cpu-only" if CPU_ONLY else "", "libfusedadam.a")
if CPU_ONLY:
    print(f"fusedadam: no CUDA toolkit at {CUDA_HOME} (or FADAM_CPU_ONLY=1): building the CPU-only extension")

try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError:
    sys.exit(
        "fusedadam: torch must be installed before the extension is built, and pip must see it: "
        "pip install torch, then pip install --no-build-isolation ."
    )


def library_version():
    with open(os.path.join(ROOT, "include", "fusedadam.h")) as header:
        parts = dict(re.findall(r"#define FADAM_VERSION_(MAJOR|MINOR|PATCH) (\d+)", header.read()))
    return "{MAJOR}.{MINOR}.{PATCH}".format(**parts)


class BuildWithLibrary(BuildExtension):
    """Brings build/libfusedadam.a up to date with the Makefile before linking it."""

    def run(self):
        subprocess.check_call(["make", "-s", "--no-print-directory", "-C", ROOT, f"CUDA_HOME={CUDA_HOME}", STATIC_LIB])
        super().run()


if CPU_ONLY:
    extension = CppExtension(
        name="fusedadam._C",
        sources=["python/fusedadam/_C.cpp"],
        include_dirs=[os.path.join(ROOT, "include")],
        define_macros=[("FADAM_CPU_ONLY", None)],
        # xxhash: the checkpoint checksum (XXH3) that libfusedadam.a calls, found as the Makefile finds it.
        libraries=["xxhash"],
        extra_objects=[os.path.join(ROOT, STATIC_LIB)],
        extra_compile_args=["-O2"],
        extra_link_args=["-Wl,--exclude-libs,ALL", "-lpthread"],
        depends=[STATIC_LIB, "include/fusedadam.h"],
    )
else:
    extension = CppExtension(
        name="fusedadam._C",
        sources=["python/fusedadam/_C.cpp"],
        include_dirs=[os.path.join(ROOT, "include"), os.path.join(CUDA_HOME, "include")],
        libraries=["c10_cuda", "xxhash"],
        extra_objects=[os.path.join(ROOT, STATIC_LIB), os.path.join(CUDA_HOME, "lib64", "libcudart_static.a")],
        extra_compile_args=["-O2"],
        extra_link_args=["-Wl,--exclude-libs,ALL", "-ldl", "-lrt", "-lpthread"],
        depends=[STATIC_LIB, "include/fusedadam.h"],
    )

setup(
    name="fusedadam",
    version=library_version(),
    description="Fused multi-tensor Adam/AdamW: FusedAdamW, a drop-in for torch.optim.AdamW",
    packages=["fusedadam"],
    package_dir={"": "python"},
    python_requires=">=3.9",
    install_requires=["torch"],
    ext_modules=[extension],
    cmdclass={"build_ext": BuildWithLibrary.with_options(use_ninja=False)},
    options={"build": {"build_base": os.path.join("build", "python")}},
    zip_safe=False,
)
