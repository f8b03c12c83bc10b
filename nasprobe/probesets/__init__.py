"""Probe sets: the images every checkpoint is run on (``--probe PROBE``).

:func:`load_probe_set` (:mod:`.probeset`) opens ``.npy``/``.npz`` arrays (:mod:`.arrays`) or
a folder of images (:mod:`.folders`) and fits them to a model input (:mod:`.layout`); the rules
are in :mod:`nasprobe.probesets.probeset`'s docstring and docs/. A :class:`ProbeSet` reads its
examples from a :class:`ProbeSource`. :func:`load_text_probe` reads a text
file, one example per line, and has the run's source tokenise it (:mod:`.text`).

Owns reading probe sets and fitting them to a model's input. May import numpy, Pillow (image
folders only) and :mod:`nasprobe.errors`.
"""

from .layout import IMAGE_SUFFIXES
from .probeset import ProbeSet, ProbeSource, load_probe_set
from .text import TEXT_SUFFIXES, is_text_probe, load_text_probe

__all__ = ["ProbeSet", "ProbeSource", "load_probe_set", "IMAGE_SUFFIXES", "TEXT_SUFFIXES",
           "is_text_probe", "load_text_probe"]
