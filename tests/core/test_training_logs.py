"""Training logs → metrics: values read back equal the values written, in nasprobe's names."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nasprobe.store.training_logs import TrainingLogError, canonical_metric_name, read_training_log

RNG = np.random.default_rng(5)
EPOCHS = 4
TRAIN_LOSS = RNG.uniform(0.5, 2.0, EPOCHS).round(6).tolist()
TRAIN_ACC = RNG.uniform(0.1, 0.9, EPOCHS).round(6).tolist()
VAL_LOSS = RNG.uniform(0.5, 2.0, EPOCHS).round(6).tolist()
VAL_ACC = RNG.uniform(0.1, 0.9, EPOCHS).round(6).tolist()
LR = [1e-3 / (e + 1) for e in range(EPOCHS)]


def _by_epoch(values, offset=0):
    return {e + offset: v for e, v in enumerate(values)}


def _expected_keras(offset=0):
    return {"train_loss": _by_epoch(TRAIN_LOSS, offset), "train_accuracy": _by_epoch(TRAIN_ACC, offset),
            "loss": _by_epoch(VAL_LOSS, offset), "accuracy": _by_epoch(VAL_ACC, offset),
            "lr": _by_epoch(LR, offset)}


def test_canonical_names():
    cases = {"val_loss": "loss", "val_acc": "accuracy", "test/loss": "loss", "Loss/test": "loss",
             "epoch_val_loss": "loss", "validation/epoch_accuracy": "accuracy",
             "loss": "train_loss", "acc": "train_accuracy", "train/epoch_loss": "train_loss",
             "train_acc_epoch": "train_accuracy", "val_sparse_categorical_accuracy": "accuracy",
             "train_loss_step": "train_loss_step", "lr-Adam": "lr-Adam", "batch_loss": "batch_loss",
             "val_train_loss": "val_train_loss", "test_accuracy": "accuracy"}
    assert {k: canonical_metric_name(k) for k in cases} == cases


def test_keras_csvlogger(tmp_path):
    path = tmp_path / "training.log"
    lines = ["epoch;accuracy;learning_rate;loss;val_accuracy;val_loss".replace("learning_rate", "lr")]
    for e in range(EPOCHS):
        lines.append(f"{e};{TRAIN_ACC[e]!r};{LR[e]!r};{TRAIN_LOSS[e]!r};{VAL_ACC[e]!r};{VAL_LOSS[e]!r}")
    path.write_text("\n".join(lines) + "\n")  # Keras CSVLogger(separator=";")
    assert read_training_log(path) == _expected_keras()
    assert read_training_log(path, epoch_offset=1) == _expected_keras(offset=1)


def test_lightning_sparse_rows_merged_per_epoch(tmp_path):
    header = "epoch,lr-Adam,step,train_loss_epoch,train_loss_step,val_acc,val_loss"
    rows, step, last_step_loss = [header], 0, {}
    for e in range(EPOCHS):
        for k in range(3):  # per-step rows: only train_loss_step filled
            value = TRAIN_LOSS[e] + 0.1 * k
            rows.append(f"{e},,{step},,{value!r},,")
            last_step_loss[e] = value
            step += 1
        rows.append(f"{e},,{step - 1},,,{VAL_ACC[e]!r},{VAL_LOSS[e]!r}")
        rows.append(f"{e},,{step - 1},{TRAIN_LOSS[e]!r},,,")
        rows.append(f"{e},{LR[e]!r},{step - 1},,,,")
    rows.append(",,99,,,,")  # a row without epoch is ignored
    folder = tmp_path / "lightning_logs" / "version_0"
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text("\n".join(rows) + "\n")
    got = read_training_log(tmp_path / "lightning_logs")  # folder with one metrics.csv
    assert got == {"lr-Adam": _by_epoch(LR), "train_loss": _by_epoch(TRAIN_LOSS),
                   "train_loss_step": last_step_loss, "accuracy": _by_epoch(VAL_ACC),
                   "loss": _by_epoch(VAL_LOSS)}


def test_nasprobe_metrics_csv(tmp_path):
    path = tmp_path / "metrics.csv"
    lines = ["epoch,train_loss,train_accuracy,test_loss,test_accuracy"]
    lines += [f"{e},{TRAIN_LOSS[e]!r},{TRAIN_ACC[e]!r},{VAL_LOSS[e]!r},{VAL_ACC[e]!r}"
              for e in range(EPOCHS)]
    lines.append(f"{EPOCHS},nan,,{VAL_LOSS[0]!r},")  # diverged epoch: NaN kept, empty dropped
    path.write_text("\n".join(lines) + "\n")
    got = read_training_log(path)
    expected = _expected_keras()
    del expected["lr"]
    expected["loss"][EPOCHS] = VAL_LOSS[0]
    assert math.isnan(got["train_loss"].pop(EPOCHS))
    assert got == expected


def test_keras_history_json(tmp_path):
    path = tmp_path / "history.json"
    path.write_text(json.dumps({"loss": TRAIN_LOSS, "accuracy": TRAIN_ACC, "val_loss": VAL_LOSS,
                                "val_accuracy": VAL_ACC, "lr": LR}))
    assert read_training_log(path) == _expected_keras()
    rows = [{"epoch": e + 10, "val_loss": VAL_LOSS[e], "loss": TRAIN_LOSS[e]} for e in range(EPOCHS)]
    path.write_text(json.dumps(rows))
    assert read_training_log(path) == {"loss": _by_epoch(VAL_LOSS, 10),
                                       "train_loss": _by_epoch(TRAIN_LOSS, 10)}


def _write_events(folder, scalars, tensor_scalars=False):
    """Write {tag: {step: value}} with tensorboard's own EventFileWriter (no TensorFlow)."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    from tensorboard.util import tensor_util

    writer = EventFileWriter(str(folder))
    for tag, values in scalars.items():
        for step, value in values.items():
            if tensor_scalars:  # how TF2 / the Keras TensorBoard callback write scalars
                meta = summary_pb2.SummaryMetadata(
                    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
                val = summary_pb2.Summary.Value(tag=tag, metadata=meta, tensor=tensor_util
                                                .make_tensor_proto(np.float32(value)))
            else:  # how torch's SummaryWriter / tensorboardX write them
                val = summary_pb2.Summary.Value(tag=tag, simple_value=value)
            writer.add_event(event_pb2.Event(wall_time=1.0e9 + step, step=step,
                                             summary=summary_pb2.Summary(value=[val])))
    writer.close()


def test_tensorboard_keras_layout(tmp_path):
    logdir = tmp_path / "logs"
    (logdir / "train").mkdir(parents=True)
    (logdir / "validation").mkdir()
    _write_events(logdir / "train", {"epoch_loss": _by_epoch(TRAIN_LOSS),
                                     "epoch_accuracy": _by_epoch(TRAIN_ACC),
                                     "epoch_learning_rate": _by_epoch(LR)}, tensor_scalars=True)
    _write_events(logdir / "validation", {"epoch_loss": _by_epoch(VAL_LOSS),
                                          "epoch_accuracy": _by_epoch(VAL_ACC)}, tensor_scalars=True)
    got = read_training_log(logdir)
    f32 = lambda vs: {e: float(np.float32(v)) for e, v in enumerate(vs)}  # noqa: E731
    assert got == {"train_loss": f32(TRAIN_LOSS), "train_accuracy": f32(TRAIN_ACC),
                   "train/epoch_learning_rate": f32(LR), "loss": f32(VAL_LOSS),
                   "accuracy": f32(VAL_ACC)}


def test_tensorboard_single_event_file(tmp_path):
    _write_events(tmp_path, {"Loss/train": _by_epoch(TRAIN_LOSS), "Loss/test": _by_epoch(VAL_LOSS),
                             "Accuracy/test": _by_epoch(VAL_ACC)})
    (event_file,) = tmp_path.glob("events.out.tfevents*")
    got = read_training_log(event_file)
    f32 = lambda vs: {e: float(np.float32(v)) for e, v in enumerate(vs)}  # noqa: E731
    assert got == {"train_loss": f32(TRAIN_LOSS), "loss": f32(VAL_LOSS), "accuracy": f32(VAL_ACC)}


def test_clashing_names_keep_the_loser(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("epoch,val_loss,test_loss,loss,train_loss\n0,1.5,2.5,3.5,4.5\n")
    assert read_training_log(path) == {"val_loss": {0: 1.5}, "loss": {0: 2.5},
                                       "loss_raw": {0: 3.5}, "train_loss": {0: 4.5}}


@pytest.mark.parametrize("name, text, message", [
    ("a.csv", "loss,val_loss\n1,2\n", "no 'epoch' column"),
    ("b.csv", "epoch,loss\n0,abc\n", "line 2, column loss"),
    ("c.json", '{"loss": [1, 2], "val_loss": [1]}', "different lengths"),
    ("d.json", '{"loss": 3}', "neither a Keras history"),
])
def test_bad_logs_name_the_problem(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TrainingLogError, match=message) as info:
        read_training_log(path)
    assert str(path) in str(info.value)


def test_missing_and_empty(tmp_path):
    with pytest.raises(TrainingLogError, match="no such file"):
        read_training_log(tmp_path / "nothing.csv")
    with pytest.raises(TrainingLogError, match="no TensorBoard event files and no single"):
        read_training_log(tmp_path)


def test_tensorboard_lightning_global_steps(tmp_path):
    """Lightning's TensorBoardLogger: step = global step, an `epoch` tag gives the epoch."""
    epoch_tag, step_loss, val_loss, last = {}, {}, {}, {}
    for e in range(EPOCHS):
        for k in range(3):
            step = 3 * e + k
            epoch_tag[step] = float(e)
            step_loss[step] = TRAIN_LOSS[e] + 0.125 * k
            last[e] = step_loss[step]
        val_loss[3 * e + 2] = VAL_LOSS[e]
    _write_events(tmp_path, {"epoch": epoch_tag, "train_loss_step": step_loss,
                             "val_loss": val_loss})
    got = read_training_log(tmp_path)
    f32 = lambda d: {e: float(np.float32(v)) for e, v in d.items()}  # noqa: E731
    assert got == {"train_loss_step": f32(last), "loss": f32(_by_epoch(VAL_LOSS))}
