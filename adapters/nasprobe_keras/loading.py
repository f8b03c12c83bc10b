"""Reading Keras checkpoints: whole models (safe mode), architectures, and raw weight arrays.

Formats:

* ``.keras`` — zip with ``config.json`` and ``model.weights.h5`` (Keras 3);
* ``.weights.h5`` — Keras 3 weights only (``layers/<path>/vars/<i>``, the layer's name in the
  ``vars`` group's ``name`` attribute);
* ``.h5`` — legacy HDF5: a full model (``model_config`` + ``model_weights``) or weights only
  (``layer_names`` / ``weight_names`` attributes);
* ``.json`` — an architecture from ``model.to_json()``.

Weight arrays are read with h5py, without deserializing any Python object; models are loaded
with ``safe_mode=True`` unless the caller trusts the files (``--trust-pickle``).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import h5py
import numpy as np

from nasprobe.contract import parse_shape
from nasprobe.errors import CheckpointError, NasprobeError
from nasprobe.frameworks.model_spec import call_model_spec

__all__ = ["read_weights", "load_model", "load_architecture_json", "model_from_spec",
           "find_architecture_file"]

_UNSAFE_HINT = ("it holds Python code (a Lambda layer or another object that needs unsafe "
                "deserialization), refused in safe mode; pass --trust-pickle "
                "(trust_pickle=True, i.e. safe_mode=False) only if you trust this file")


def _open_h5(path: Path) -> h5py.File:
    """The HDF5 weights of a ``.keras`` zip or an ``.h5`` file, opened read-only."""
    try:
        if path.name.lower().endswith(".keras"):
            with zipfile.ZipFile(path) as z:
                data = z.read("model.weights.h5")
            return h5py.File(io.BytesIO(data), "r")
        return h5py.File(path, "r")
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise CheckpointError(path, f"not a readable Keras checkpoint ({exc})") from exc


def _decode(names) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _read_keras3(group: h5py.Group, out: dict[str, list[np.ndarray]]) -> None:
    for key in group:
        layer = group[key]
        if "layers" in layer:  # a nested model: its own layers
            _read_keras3(layer["layers"], out)
        vars_ = layer.get("vars")
        if vars_ is None or len(vars_) == 0:
            continue
        name = vars_.attrs.get("name", key)
        name = name.decode() if isinstance(name, bytes) else str(name)
        out[name] = [np.asarray(vars_[str(i)][()]) for i in range(len(vars_))]


def read_weights(path: str | Path) -> dict[str, list[np.ndarray]]:
    """The weight arrays of a Keras checkpoint, per layer.

    Args:
        path: ``.keras``, ``.weights.h5`` or legacy ``.h5`` file.

    Returns:
        ``{layer name: [array, ...]}`` in ``layer.weights`` order, Keras layout (a conv kernel
        is ``(kh, kw, in, out)``); layers without weights are left out.

    Raises:
        CheckpointError: unreadable file or unknown layout.
    """
    path = Path(path)
    out: dict[str, list[np.ndarray]] = {}
    with _open_h5(path) as f:
        if "layers" in f:
            _read_keras3(f["layers"], out)
            return out
        group = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in group.attrs:
            raise CheckpointError(path, "HDF5 file without Keras weights (neither 'layers' "
                                  "nor 'layer_names' found)")
        for lname in _decode(group.attrs["layer_names"]):
            names = _decode(group[lname].attrs.get("weight_names", []))
            if names:
                out[lname] = [np.asarray(group[lname][n][()]) for n in names]
    return out


def _wrap_load_error(path: Path, exc: Exception) -> CheckpointError:
    text = str(exc)
    if "safe_mode" in text or "unsafe" in text.lower() or "lambda" in text.lower():
        return CheckpointError(path, f"{_UNSAFE_HINT} ({exc.__class__.__name__}: {text})")
    return CheckpointError(path, f"cannot load the Keras model ({exc.__class__.__name__}: "
                           f"{text})")


def load_model(path: str | Path, trust_pickle: bool = False):
    """A whole Keras model from a ``.keras`` or legacy full-model ``.h5`` file.

    Loaded with ``safe_mode=not trust_pickle`` and ``compile=False``.

    Raises:
        CheckpointError: naming ``path``; a Lambda layer in safe mode says so and mentions
            ``--trust-pickle``.
    """
    import keras

    path = Path(path)
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=not trust_pickle)
    except Exception as exc:  # keras raises ValueError, TypeError, OSError...
        raise _wrap_load_error(path, exc) from exc


def load_architecture_json(path: str | Path, trust_pickle: bool = False):
    """A Keras model (random weights) from a ``model.to_json()`` file, in safe mode."""
    from keras.saving import deserialize_keras_object

    path = Path(path)
    try:
        config = json.loads(path.read_text())
        return deserialize_keras_object(config, safe_mode=not trust_pickle)
    except Exception as exc:
        raise _wrap_load_error(path, exc) from exc


def find_architecture_file(folder: Path, checkpoints: set[Path]) -> Path:
    """The architecture file of a weights-only run: the one ``.json`` file in ``folder``, else
    the one ``.keras`` file that is not a checkpoint.

    Raises:
        CheckpointError: none or several candidates (named), suggesting ``--model``.
    """
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.resolve() not in checkpoints
                   and p.name.lower().endswith((".json", ".keras")))
    for ext in (".json", ".keras"):
        of_kind = [p for p in found if p.name.lower().endswith(ext)]
        if len(of_kind) == 1:
            return of_kind[0]
    what = "no" if not found else f"several ({', '.join(p.name for p in found)})"
    raise CheckpointError(folder, f"weights-only checkpoints (.weights.h5) need the "
                          f"architecture: {what} .json/.keras file in the folder; pass "
                          "--model MODULE:CALLABLE")


def model_from_spec(spec, input_shape=None):
    """A built Keras model from ``--model``.

    Args:
        spec: ``"MODULE:CALLABLE"`` or ``"MODULE:CALLABLE(key=value, ...)"`` (literals only;
            MODULE may be a ``.py`` path), a callable, or a ``keras.Model``.
        input_shape: Keras input shape without the batch (``(H, W, C)``, or ``"H,W,C"``) used to
            build a model the factory left unbuilt.

    Raises:
        NasprobeError: bad spec, import failure, or a model that is not built.
    """
    import keras

    if isinstance(spec, keras.Model):
        model = spec
    elif callable(spec):
        model = spec()
    else:
        model = call_model_spec(str(spec))
    if not isinstance(model, keras.Model):
        raise NasprobeError(f"--model {spec!r} returned {type(model).__name__}, not a "
                            "keras.Model")
    if not model.built or not getattr(model, "inputs", None):
        if input_shape is None:
            raise NasprobeError(f"--model {spec!r} returned an unbuilt model; give "
                                "--input-shape H,W,C")
        model(keras.Input(parse_shape(input_shape, "H,W,C")))
    return model
