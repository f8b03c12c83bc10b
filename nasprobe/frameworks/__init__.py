"""Frameworks: which adapter reads which checkpoints, and the built-in ONNX adapter.

Owns the plug-in registry (:mod:`.registry`, entry-point group ``nasprobe.adapters``), the
ONNX adapter (:mod:`.onnx_adapter`), checkpoint folders and epoch parsing (:mod:`.checkpoints`)
and ``--model MODULE:CALLABLE`` specs (:mod:`.model_spec`). Adapters themselves live outside the
core (``adapters/nasprobe_*``) and are found only through the registry.

May import: the base modules and :mod:`nasprobe.onnxgraph`.
"""
