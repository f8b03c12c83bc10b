"""Builds the optional C kernels (nasprobe/measures/ckernels.c, the Python bindings, and
nas_kernels.c, the loops); everything else is in pyproject.toml.

``optional=True``: without a C compiler the package still installs and nasprobe falls back to
computing NAS inside the onnxruntime graph (see nasprobe/measures/kernels.py).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("nasprobe.measures.ckernels",
                             ["nasprobe/measures/ckernels.c", "nasprobe/measures/nas_kernels.c"],
                             depends=["nasprobe/measures/ckernels.h"],
                             extra_compile_args=["-O3", "-std=c99", "-ffp-contract=fast",
                                                 "-fno-math-errno", "-fno-trapping-math"],
                             optional=True)])
