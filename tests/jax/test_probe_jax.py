"""End to end through the CLI: ``nasprobe probe`` on Flax NNX checkpoints stores the NAS of JAX's
own tensors (module outputs for ``linear``, the ReLU inputs for ``preact``), computed here
with JAX on the same weights and measured in float64 numpy."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import nasprobe
from nasprobe.cli import main

from .conftest import EPOCHS, LINEAR, MODEL, PREACT_OF, jax_outputs, nas64


def _probe(folder, probe, out, *extra):
    result = CliRunner().invoke(main, ["probe", str(folder), "--probe", str(probe), "--out",
                                       str(out), "--run", "r", "--model", MODEL, *extra])
    assert result.exit_code == 0, result.output
    return nasprobe.open_store(out)


# Orbax folders with --framework jax for one tap, msgpack files found by auto detection for the
# other: both formats and both ways in, with one export each.
CASES = {"linear": ("orbax", ["--framework", "jax"]), "preact": ("msgpack", [])}


@pytest.fixture(scope="module", params=sorted(CASES))
def probed(request, jax_run, tmp_path_factory):
    tap = request.param
    fmt, extra = CASES[tap]
    out = tmp_path_factory.mktemp("store") / f"{tap}.zarr"
    tree = _probe(jax_run[fmt], jax_run["probe"], out, "--tap", tap, *extra)
    return tap, tree


def test_layers_are_flax_module_paths(probed):
    tap, tree = probed
    layers = list(tree.to_dataset()["layer"].values)
    assert layers == (list(LINEAR) if tap == "linear" else list(PREACT_OF))


def test_stored_nas_equals_numpy_nas_of_jax_tensors(probed, jax_run):
    """Per-image maps, median and mean of every layer and epoch, against JAX to 1e-4."""
    tap, tree = probed
    ds = tree.to_dataset()
    worst = 0.0
    for epoch in EPOCHS:
        outputs = jax_outputs(jax_run["nets"][epoch], jax_run["x"])
        for layer in ds["layer"].values:
            tensor = outputs[layer if tap == "linear" else PREACT_OF[layer]]
            want = nas64(tensor)  # (N, *locations): channels last in Flax
            stored = tree[f"heatmaps/{layer}"]["nas_image_map"].sel(run="r", epoch=epoch)
            np.testing.assert_allclose(stored.values, want, rtol=0, atol=1e-4,
                                       err_msg=f"{tap} {layer} epoch {epoch}")
            for name, value in (("nas_median", np.median(want)), ("nas_mean", want.mean())):
                got = float(ds[name].sel(run="r", epoch=epoch, layer=layer))
                assert abs(got - value) <= 1e-4, (tap, layer, epoch, name, got, value)
                worst = max(worst, abs(got - value))
            worst = max(worst, float(np.abs(stored.values - want).max()))
    print(f"max |stored - numpy(JAX)| for tap={tap}: {worst:.2e}")


def test_provenance_names_the_framework(probed):
    _, tree = probed
    assert tree["/"].attrs["framework"] == "jax"
