"""Training logs someone else wrote (issue 24, item 10): out-of-range epochs are a clear error
before any probing, and a wide header over short rows costs time in proportion to the file."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from nasprobe.cli import main
from nasprobe.store.training_logs import TrainingLogError, read_training_log
from tests.core.test_training_logs import _write_events
from tests.hostile import tree_digest, write_onnx_run, write_probe


@pytest.mark.parametrize("name, text", [
    ("keras.csv", "epoch,loss,val_loss\n0,1.0,1.1\n1e300,0.5,0.6\n"),
    ("neg.csv", "epoch,loss\n-9007199254740993,0.5\n"),
    ("history.json", '{"epoch": [0, 1e300], "loss": [1.0, 0.5]}'),
    ("rows.json", '[{"epoch": 1e300, "loss": 0.5}]'),
    ("inf.json", '[{"epoch": Infinity, "loss": 0.5}]'),
])
def test_epoch_out_of_range_is_exit_2_before_probing(tmp_path, name, text):
    """nasprobe probe --metrics LOG whose epoch is 1e300 (or ±2**53 and beyond, or infinite):
    exit 2 naming the log, the line and the epoch, no traceback, and the store untouched
    (before, the OverflowError came after the whole probe, as a traceback)."""
    log = tmp_path / name
    log.write_text(text)
    write_onnx_run(tmp_path / "run")
    store = tmp_path / "nas.zarr"
    res = CliRunner().invoke(main, ["probe", str(tmp_path / "run"), "--probe",
                                    str(write_probe(tmp_path / "p.npz")), "--out", str(store),
                                    "--metrics", str(log)])
    assert res.exit_code == 2, (res.output, res.exception)
    assert str(log) in res.stderr and "epoch" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and "Overflow" not in res.stderr
    assert not store.exists() or not tree_digest(store)


def test_log_that_is_not_utf8_is_exit_2(tmp_path):
    """A CSV log with a Latin-1 byte in its header (found by the fuzz test): a TrainingLogError
    naming the file and the byte, not a UnicodeDecodeError traceback."""
    log = tmp_path / "latin.csv"
    log.write_bytes(b"epoch,loss,pr\xe9cision\n0,1.0,0.5\n")
    with pytest.raises(TrainingLogError, match="is not UTF-8 text") as info:
        read_training_log(log)
    assert str(log) in str(info.value)


def test_tensorboard_epoch_tag_out_of_range(tmp_path):
    """A TensorBoard log whose ``epoch`` tag holds infinity or 1e30: a TrainingLogError naming
    the step, not an OverflowError."""
    for value, folder in ((float("inf"), tmp_path / "inf"), (1e30, tmp_path / "big")):
        folder.mkdir()
        _write_events(folder, {"epoch": {0: 0.0, 5: value}, "train_loss_step": {0: 1.0, 5: 2.0}})
        with pytest.raises(TrainingLogError, match="step 5: epoch") as info:
            read_training_log(folder)
        assert str(folder) in str(info.value)


def _wide(path, columns, rows):
    header = "epoch," + ",".join(f"metric_{i}" for i in range(columns))
    path.write_text(header + "\n" + "".join(f"{e},{e / 10}\n" for e in range(rows)))
    return path


def test_wide_header_short_rows_is_not_quadratic(tmp_path):
    """A 230 kB CSV of 15000 columns over 4000 two-cell rows (before: over 60 s, each row
    padded to the header) reads in seconds with every value in place; the empty columns are
    not metrics."""
    path = _wide(tmp_path / "wide.csv", 15000, 4000)
    assert 200_000 < path.stat().st_size < 260_000
    t0 = time.perf_counter()
    got = read_training_log(path)
    took = time.perf_counter() - t0
    assert got == {"metric_0": {e: e / 10 for e in range(4000)}}
    assert took < 10, f"{took:.1f} s"  # about 0.5 s measured on a loaded 2-core machine
