"""Text probes through the job, with hand-built ONNX token models (embedding, a dense layer
per token and, with ``pool``, a stride-2 Conv1d over the tokens that halves their number) read
by a made-up adapter whose source offers the ``tokenize`` hook
(:class:`nasprobe.contract.Tokenizing`).

A layer whose locations are neither one per token nor a single one is refused before any
epoch is probed (exit 2, naming the probe file and the layer: its padding could not be
masked), rather than failing mid-run or counting padding. Plain ONNX files, which carry no
tokenizer, are refused saying so.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from nasprobe import contract
from nasprobe.cli import main
from nasprobe.frameworks import registry

VOCAB, DIM, WIDTH = 20, 6, 5


def token_model(rng, pool: bool) -> onnx.ModelProto:
    """ids ``(N, T)`` -> Gather (embedding) -> ``dense`` (MatMul + Add, Relu; T locations) ->
    with ``pool``, ``pool`` (Conv1d, kernel 2, stride 2, Relu; T // 2 locations)."""
    init = [numpy_helper.from_array(rng.normal(0, 1, s).astype(np.float32), n)
            for n, s in (("emb", (VOCAB, DIM)), ("w", (DIM, WIDTH)), ("b", (WIDTH,)),
                         ("k", (WIDTH, WIDTH, 2)), ("kb", (WIDTH,)))]
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"]),
             helper.make_node("MatMul", ["e", "w"], ["m"], name="dense"),
             helper.make_node("Add", ["m", "b"], ["a"], name="dense_bias"),
             helper.make_node("Relu", ["a"], ["h"])]
    out = helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", "T", WIDTH])
    if pool:
        nodes += [helper.make_node("Transpose", ["h"], ["ht"], perm=[0, 2, 1]),
                  helper.make_node("Conv", ["ht", "k", "kb"], ["c"], name="pool",
                                   kernel_shape=[2], strides=[2]),
                  helper.make_node("Relu", ["c"], ["y"])]
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", WIDTH, "P"])
    else:
        init = init[:3]
    graph = helper.make_graph(
        nodes, "tokens", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "T"])],
        [out], initializer=init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    for node in model.graph.node:
        if node.name in ("dense", "dense_bias"):
            p = node.metadata_props.add()
            p.key, p.value = "nasprobe.layer", "dense"
    onnx.checker.check_model(model)
    return model


class WordSource:
    """The run's ONNX token models as written (integer input kept), with a tokenizer: word
    ``wK`` is id K, rows right-padded."""

    framework = "tokfw"
    provenance: dict = {}

    def __init__(self, checkpoints):
        self.first = checkpoints[0].path

    def architecture(self):
        return onnx.load(str(self.first))

    def weights(self, checkpoint):
        return initializers(checkpoint.path)

    def tokenize(self, lines, max_length):
        rows = [[int(w[1:]) for w in line.split()][:max_length] for line in lines]
        width = max_length or max(map(len, rows))
        ids, mask = np.zeros((len(rows), width), np.int64), np.zeros((len(rows), width), np.int64)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = r, 1
        return contract.TokenizedText(ids, mask, "words")


def initializers(path) -> dict[str, np.ndarray]:
    """The weights of an ONNX file, by name."""
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


class WordAdapter(contract.BaseAdapter):
    """Checkpoints ``*.tokonnx``: ONNX token models read with :class:`WordSource`."""

    name = "tokfw"
    extensions = (".tokonnx",)
    extra = "tokfw"

    def make_source(self, checkpoints, options):
        return WordSource(checkpoints)


word_adapter = WordAdapter()


@pytest.fixture
def tokfw(monkeypatch):
    """Register :class:`WordAdapter` as an installed plug-in, for this test only."""
    ep = EntryPoint("tokfw", f"{__name__}:word_adapter", registry.GROUP)
    real = registry.entry_points
    monkeypatch.setattr(registry, "entry_points", lambda group: list(real(group=group)) + (
        [ep] if group == registry.GROUP else []))
    registry.reset()
    yield
    registry.reset()


def write(tmp_path, pool: bool):
    rng = np.random.default_rng(3)
    run = tmp_path / "run"
    run.mkdir()
    for epoch in (1, 2):
        onnx.save(token_model(rng, pool), str(run / f"epoch_{epoch}.tokonnx"))
    text = tmp_path / "lines.txt"
    text.write_text("w1 w2 w3 w4\nw5 w6\n\nw7 w8 w9\n", encoding="utf-8")
    return run, text


def test_a_layer_with_other_locations_than_tokens_is_refused_up_front(tokfw, tmp_path):
    run, text = write(tmp_path, pool=True)
    out = tmp_path / "s.zarr"
    res = CliRunner().invoke(main, ["probe", str(run), "--probe", str(text), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert str(text) in res.stderr
    assert "layer 'pool' has locations (2,), not one per token (4,)" in res.stderr
    assert "its padding cannot be masked" in res.stderr and "integer .npy" in res.stderr
    assert not out.exists()  # refused before the store was created


def test_the_same_model_without_that_layer_is_probed(tokfw, tmp_path):
    """The control: the token model and text probe are otherwise fine, so the refusal above is
    the layer's; per token, padding left out, ``dense``'s NAS is that of plain numpy."""
    import nasprobe

    run, text = write(tmp_path, pool=False)
    out = tmp_path / "s.zarr"
    res = CliRunner().invoke(main, ["probe", str(run), "--probe", str(text), "--out", str(out)])
    assert res.exit_code == 0, res.output
    ds = nasprobe.open_store(out).to_dataset()
    assert ds.layer.values.tolist() == ["dense"] and ds.epoch.values.tolist() == [1, 2]
    words = [[int(w[1:]) for w in line.split()] for line in text.read_text().splitlines()]
    for epoch in (1, 2):
        init = initializers(run / f"epoch_{epoch}.tokonnx")
        a = np.concatenate([init["emb"][r] @ init["w"] + init["b"] for r in words if r])
        a = a.astype(np.float64)  # (real tokens, WIDTH): padding has no row here
        p = np.exp(a - a.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        nas = 1 - np.exp(-(p * np.log(p)).sum(axis=1)) / WIDTH
        got = ds.sel(run="run", epoch=epoch, layer="dense")
        np.testing.assert_allclose([float(got[k]) for k in ("nas_mean", "nas_min", "nas_max")],
                                   [nas.mean(), nas.min(), nas.max()], rtol=0, atol=1e-6)


def test_a_text_probe_for_plain_onnx_files_names_the_missing_tokenizer(tmp_path):
    """Plain ONNX files carry no tokenizer; their integer input is fed as float32 (a Cast in
    front, docs/onnx.md), so the refusal must name the tokenizer, not call the model an image
    model."""
    run, text = write(tmp_path, pool=False)
    for f in run.iterdir():
        f.rename(f.with_suffix(".onnx"))
    res = CliRunner().invoke(main, ["probe", str(run), "--probe", str(text), "--out",
                                    str(tmp_path / "s.zarr")])
    assert res.exit_code == 2, res.output
    assert str(text) in res.stderr and "the onnx checkpoints offer no tokenizer" in res.stderr
    assert "images" not in res.stderr
