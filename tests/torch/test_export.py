"""One export per architecture, per-epoch weights without re-export: the ONNX linear outputs
under the second checkpoint's weights equal torch's own Conv/Linear outputs (forward hooks)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from nasprobe.contract import SourceOptions
from nasprobe.frameworks.checkpoints import find_checkpoints
from nasprobe_torch import make_source

from .conftest import FACTORIES, linear_outputs, run_onnx, save_pair, torch_taps

KINDS = list(FACTORIES)


def _export(kind, folder):
    """(kind, source, torch models of epochs 1 and 2) with the source exported once."""
    torch_models = save_pair(kind, folder)
    source = make_source(find_checkpoints([folder]), SourceOptions(model=FACTORIES[kind]))
    source.architecture()
    return kind, source, torch_models


def _inputs(model, n=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *model.input_shape)).astype(np.float32)


def check_linear_outputs_match_torch_hooks_for_second_checkpoint(exported):
    kind, source, (_, second) = exported
    arch = source.architecture()
    ckpt = source.checkpoints[1]
    weights = source.weights(ckpt)
    assert all(w.dtype == np.float32 for w in weights.values())
    taps = linear_outputs(arch)
    x = _inputs(second)
    got = run_onnx(arch, weights, x, list(taps.values()))
    linear, _ = torch_taps(second, x)
    assert set(taps) == set(linear), (kind, sorted(taps), sorted(linear))
    for layer, tensor in taps.items():
        np.testing.assert_allclose(got[tensor], linear[layer], rtol=1e-4, atol=1e-4,
                                   err_msg=f"{kind}: {layer}")


def check_first_checkpoint_weights_are_the_architecture(exported):
    _, source, (first, _) = exported
    arch = source.architecture()
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in arch.graph.initializer}
    for name, value in source.weights(source.checkpoints[0]).items():
        np.testing.assert_array_equal(inits[name], value)
    x = _inputs(first)
    out = run_onnx(arch, {}, x, [arch.graph.output[0].name])[arch.graph.output[0].name]
    import torch
    with torch.no_grad():
        np.testing.assert_allclose(out, first(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-4)


def check_batch_axis_is_dynamic(exported):
    _, source, (_, second) = exported
    dim0 = source.architecture().graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value
    x = _inputs(second, n=5)
    arch = source.architecture()
    out = run_onnx(arch, source.weights(source.checkpoints[1]), x, [arch.graph.output[0].name])
    assert next(iter(out.values())).shape[0] == 5


def check_layer_metadata_on_linear_batchnorm_and_activation_nodes(exported):
    kind, source, _ = exported
    graph = source.architecture().graph
    meta = [({p.key: p.value for p in n.metadata_props}, n) for n in graph.node]
    tagged = {}
    for m, n in meta:
        if "nasprobe.layer" in m:
            tagged.setdefault(m["nasprobe.layer"], []).append(n.op_type)
    assert list(dict.fromkeys(source.layers())) == [l for l in tagged if l in source.layers()]
    if kind == "norm":
        for i in range(1, 5):
            assert tagged[f"conv{i}"] == ["Conv", "BatchNormalization", "Relu"], tagged
        assert tagged["fc1"] == ["Gemm", "Relu"]
        assert tagged["fc2"] == ["Gemm"]
    if kind == "conv1d_sequence":
        assert tagged["conv1"] == ["Conv", "Relu"]
        assert tagged["embed"] == ["MatMul", "Add", "Relu"]
        assert tagged["out"] == ["MatMul"]
    if kind == "residual_depthwise":
        assert tagged["conv1"] == ["Conv", "BatchNormalization", "Relu"]
        assert tagged["depthwise"] == ["Conv", "Relu"]
        assert tagged["pointwise"] == ["Conv", "BatchNormalization"]  # then the residual Add
        groups = {n.input[1]: [a.i for a in n.attribute if a.name == "group"]
                  for n in graph.node if n.op_type == "Conv"}
        assert groups["depthwise.weight"] == [4] and groups["pointwise.weight"] in ([1], [])
        pointwise = next(n for n in graph.node if n.input[1:2] == ["pointwise.weight"])
        assert list(pointwise.input)[1:] == ["pointwise.weight"]  # no computed zero bias


def check_batchnorm_is_not_folded(exported):
    kind, source, (_, second) = exported
    graph = source.architecture().graph
    n_bn = sum(n.op_type == "BatchNormalization" for n in graph.node)
    n_modules = sum(type(m).__name__.startswith("BatchNorm") for m in second.modules())
    assert n_bn == n_modules
    if kind == "norm":
        assert n_bn == 4
        # The Conv output equals the conv module's output, i.e. before BatchNorm, and differs
        # from the BatchNorm output (the ReLU's input).
        taps = linear_outputs(source.architecture())
        x = _inputs(second)
        got = run_onnx(source.architecture(), source.weights(source.checkpoints[1]), x,
                       [taps["conv2"]])
        linear, relu_in = torch_taps(second, x)
        np.testing.assert_allclose(got[taps["conv2"]], linear["conv2"], rtol=1e-4, atol=1e-4)
        assert not np.allclose(got[taps["conv2"]], relu_in["relu2"], atol=1e-2)


def check_dropout_is_gone_in_eval_mode(exported):
    kind, source, _ = exported
    ops = {n.op_type for n in source.architecture().graph.node}
    assert "Dropout" not in ops


def check_weights_are_the_state_dict_in_graph_layout(exported):
    kind, source, (_, second) = exported
    state = second.state_dict()
    weights = source.weights(source.checkpoints[1])
    layout = source.exported().layout
    assert set(weights) == set(layout)
    for name, (key, perm) in layout.items():
        expected = state[key].numpy()
        np.testing.assert_array_equal(weights[name], expected if perm is None
                                      else expected.transpose(perm))
    graph = source.architecture().graph
    inits = {t.name for t in graph.initializer}
    assert not [n for n in graph.node if n.op_type == "Transpose" and n.input[0] in inits]
    if kind == "conv1d_sequence":  # nn.Linear on (N, T, D) is a MatMul with a (D_in, D_out) weight
        assert layout["embed.weight"] == ("embed.weight", (1, 0))
        assert weights["embed.weight"].shape == (4, 6)  # (D_in, D_out)


@pytest.mark.parametrize("kind", KINDS)
def test_export_once_then_weights_per_epoch(kind, tmp_path):
    """All checks on one export per architecture (one test per export keeps xdist from
    exporting a model twice)."""
    exported = _export(kind, tmp_path)
    for check in (check_linear_outputs_match_torch_hooks_for_second_checkpoint,
                  check_first_checkpoint_weights_are_the_architecture,
                  check_batch_axis_is_dynamic,
                  check_layer_metadata_on_linear_batchnorm_and_activation_nodes,
                  check_batchnorm_is_not_folded,
                  check_dropout_is_gone_in_eval_mode,
                  check_weights_are_the_state_dict_in_graph_layout):
        check(exported)


def test_export_onnx_writes_a_runnable_file(tmp_path):
    import torch

    from nasprobe_torch import export_onnx

    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    path = tmp_path / "sub" / "net.onnx"
    proto = export_onnx(net, (4,), path)
    loaded = onnx.load(str(path))
    assert loaded.SerializeToString() == proto.SerializeToString()
    layers = [{p.key: p.value for p in n.metadata_props}.get("nasprobe.layer")
              for n in loaded.graph.node if n.op_type == "Gemm"]
    assert layers == ["0", "2"]
    x = np.random.default_rng(2).standard_normal((4, 4)).astype(np.float32)
    out = run_onnx(loaded, {}, x, [loaded.graph.output[0].name])
    with torch.no_grad():
        np.testing.assert_allclose(next(iter(out.values())), net(torch.from_numpy(x)).numpy(),
                                   rtol=1e-5, atol=1e-5)


def test_a_model_that_embeds_its_input_is_exported_with_integer_ids():
    """A language model's input is token ids: the export traces it with an int64 dummy (a float
    one fails in the embedding lookup) and the graph takes int64."""
    import onnxruntime as ort
    import torch
    from torch import nn

    from nasprobe_torch import export_onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 8), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 50))
    proto = export_onnx(model, (6,))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    ids = np.random.default_rng(0).integers(0, 50, (3, 6))
    got = ort.InferenceSession(proto.SerializeToString()).run(None, {proto.graph.input[0].name: ids})
    with torch.no_grad():
        want = model.eval()(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)
