"""``nasprobe export`` never overwrites: two checkpoints that would get one ``.onnx`` name, or an
``--out`` that is the checkpoints' own folder (however it is spelled), are refused with exit 2
before anything is written, and the checkpoints stay byte for byte as they were."""

from __future__ import annotations

import numpy as np
import onnx
from click.testing import CliRunner

from nasprobe.cli import main
from tests.core import onnx_models as om
from tests.hostile import assert_refused, tree_digest


def _export(*args):
    return CliRunner().invoke(main, ["export", *map(str, args)])


def _two_checkpoints(folder, names):
    rng = np.random.default_rng(0)
    model, _ = om.conv_bn_relu_net(rng)
    folder.mkdir()
    onnx.save(model, str(folder / names[0]))
    onnx.save(om.reweighted(model, rng), str(folder / names[1]))
    return [folder / n for n in names]


def test_two_checkpoints_one_export_name_are_refused(tmp_path):
    """``ckpt.12`` and ``ckpt.13`` (no checkpoint extension, epochs from --epoch-regex) both
    lose their last suffix: both would be written to ``ckpt.onnx``, the second over the first."""
    first, second = _two_checkpoints(tmp_path / "run", ["ckpt.12", "ckpt.13"])
    out = tmp_path / "x"
    before = tree_digest(tmp_path / "run")
    res = _export(first, second, "--framework", "onnx", "--epoch-regex", r"ckpt\.(\d+)",
                  "--out", out)
    assert_refused(res, second, f"would be exported to {out / 'ckpt.onnx'}", f"as would {first}")
    assert not out.exists()
    assert tree_digest(tmp_path / "run") == before


def test_names_that_differ_only_in_case_are_refused(tmp_path):
    """``Ckpt_5.onnx`` and ``ckpt_5.onnx`` are two files here but one on a case-insensitive
    file system (macOS, Windows, many network shares): refused as one name."""
    first, second = _two_checkpoints(tmp_path / "run", ["Ckpt_5.onnx", "ckpt_5.onnx"])
    out = tmp_path / "x"
    res = _export(first, second, "--epoch-regex", r"^C|(\d+)", "--out", out)
    assert_refused(res, second, "would be exported to", f"as would {first}")
    assert not out.exists()


def test_out_is_the_checkpoints_folder_however_spelled(tmp_path):
    run = tmp_path / "run"
    _two_checkpoints(run, ["epoch_001.onnx", "epoch_002.onnx"])
    (tmp_path / "alias").symlink_to(run, target_is_directory=True)
    before = tree_digest(run)
    for out in (run, tmp_path / "run" / ".." / "run", tmp_path / "alias"):
        res = _export(run, "--out", out)
        assert_refused(res, f"--out {out}", "is the checkpoints' own folder")
        assert tree_digest(run) == before
