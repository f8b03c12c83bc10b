"""``--model MODULE:CALLABLE(key=value, ...)``: naming the code that builds a framework's model.

Shared by the adapters that need a model object to put a checkpoint's weights into (PyTorch,
JAX). The spec is parsed without running anything (arguments are Python literals); only
:func:`call_model_spec` imports the module and calls the callable. See docs/cli.md.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from nasprobe.errors import NasprobeError

__all__ = ["parse_model_spec", "import_model_module", "call_model_spec"]


def parse_model_spec(spec: str) -> tuple[str, str, tuple, dict[str, Any]]:
    """Split ``MODULE:CALLABLE`` or ``MODULE:CALLABLE(arg, key=value, ...)``.

    Arguments must be Python literals (read with :func:`ast.literal_eval`; nothing is run).
    ``MODULE`` is a dotted module name or a path to a ``.py`` file.

    Returns:
        ``(module, callable_name, args, kwargs)``.

    Raises:
        NasprobeError: a malformed spec or a non-literal argument.
    """
    head, paren, tail = spec.partition("(")
    if ":" not in head:
        raise NasprobeError(f"--model {spec!r}: expected MODULE:CALLABLE or "
                            "MODULE:CALLABLE(key=value, ...)")
    module, _, func = head.strip().rpartition(":")
    if not module or not func.replace(".", "_").isidentifier():
        raise NasprobeError(f"--model {spec!r}: expected MODULE:CALLABLE")
    args: tuple = ()
    kwargs: dict[str, Any] = {}
    if paren:
        try:
            call = ast.parse(f"f({tail}", mode="eval").body
            if not isinstance(call, ast.Call):
                raise ValueError("not a call")
            args = tuple(ast.literal_eval(a) for a in call.args)
            for kw in call.keywords:
                if kw.arg is None:
                    raise ValueError("**kwargs is not allowed")
                kwargs[kw.arg] = ast.literal_eval(kw.value)
        except (SyntaxError, ValueError) as exc:
            raise NasprobeError(f"--model {spec!r}: arguments must be Python literals "
                                f"({exc})") from None
    return module, func, args, kwargs


def import_model_module(name: str) -> Any:
    """The module a spec names: a dotted module name, or a ``.py`` file (loaded once per path).

    Raises:
        NasprobeError: a file that does not exist.
        ImportError: a module that cannot be imported.
    """
    if name.endswith(".py") or "/" in name or "\\" in name:
        file = Path(name).resolve()
        if not file.is_file():
            raise NasprobeError(f"--model: no such file {name!r}")
        mod_name = f"nasprobe_user_model_{abs(hash(str(file)))}"
        if mod_name in sys.modules:
            return sys.modules[mod_name]
        spec = importlib.util.spec_from_file_location(mod_name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(name)


def call_model_spec(spec: str) -> Any:
    """Import the spec's module and call its callable with the spec's arguments.

    Returns:
        Whatever the callable returns (the adapter checks that it is a model of its framework).

    Raises:
        NasprobeError: a malformed spec, a module that cannot be imported, a missing callable.
    """
    module_name, func_name, args, kwargs = parse_model_spec(spec)
    try:
        obj: Any = import_model_module(module_name)
    except ImportError as exc:
        raise NasprobeError(f"--model {spec!r}: cannot import {module_name!r} ({exc})") from exc
    for part in func_name.split("."):
        if not hasattr(obj, part):
            raise NasprobeError(f"--model {spec!r}: {module_name!r} has no {func_name!r}")
        obj = getattr(obj, part)
    return obj(*args, **kwargs)
