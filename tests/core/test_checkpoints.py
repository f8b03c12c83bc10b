"""Finding checkpoints and parsing epochs from file names."""

import pytest

from nasprobe.errors import CheckpointError, NasprobeError
from nasprobe.frameworks.checkpoints import find_checkpoints, parse_epoch
from nasprobe.frameworks.registry import detect_framework


@pytest.mark.parametrize("name,epoch", [
    ("epoch_012.onnx", 12), ("epoch=12.onnx", 12), ("model-012.onnx", 12),
    ("weights.12-0.85.onnx", 12), ("init.onnx", -1), ("epoch_3.pt", 3), ("ep7.pth", 7),
    ("checkpoint-epoch=04-step=100.ckpt", 4), ("run_e5.keras", 5), ("epoch_010.weights.h5", 10),
    ("initial.pt", -1), ("model.onnx", None),
])
def test_default_patterns(name, epoch):
    assert parse_epoch(name) == epoch


def test_epoch_regex_overrides():
    assert parse_epoch("snap_a17_b3.onnx", r"_b(?P<epoch>\d+)") == 3
    assert parse_epoch("snap_a17_b3.onnx", r"_a(\d+)") == 17


def test_folder_is_sorted_by_epoch_and_errors_name_files(tmp_path):
    for n in ["epoch_10.onnx", "epoch_2.onnx", "init.onnx", "notes.txt"]:
        (tmp_path / n).write_bytes(b"x")
    assert [c.epoch for c in find_checkpoints([tmp_path])] == [-1, 2, 10]
    (tmp_path / "model-2.onnx").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="claims epoch 2"):
        find_checkpoints([tmp_path])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="empty.*no checkpoint file"):
        find_checkpoints([empty])
    (empty / "model.onnx").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="model.onnx.*cannot parse an epoch"):
        find_checkpoints([empty])


def test_framework_detection(tmp_path):
    from pathlib import Path

    assert detect_framework([Path("a/epoch_1.pt"), Path("b/init.pt")]) == "torch"
    assert detect_framework([Path("epoch_1.weights.h5")]) == "keras"
    assert detect_framework([Path("epoch_1.onnx")]) == "onnx"
    with pytest.raises(NasprobeError, match="several frameworks"):
        detect_framework([Path("epoch_1.onnx"), Path("epoch_2.pt")])
