"""ONNX's LSTM cell on the stepwise engine: peepholes, clip, input_forget, ONNX's activations (with their
alpha/beta) and a distinct output activation, forward / reverse / bidirectional, with sequence_lens and
initial states.

The oracle is onnxruntime running a one-node ONNX model built here with ``onnx.helper`` (ONNX layout: W
(D, 4H, I), R (D, 4H, H), B (D, 8H), P (D, 3H), gates i, o, f, c; P i, o, f). The weights are handed to
StepwiseLSTM by this file's own small converter (not lstmscope's reader): gates reordered to (i, f, g, o), B
split into bias_ih / bias_hh, P reordered to (i, f, o); ONNX's reverse direction is a unidirectional LSTM
reading each sequence's own steps backwards, its Y put back in input-time order. Outputs agree to 1e-5 in
float32 (Y, Y_h, Y_c); the captured gates, c and h agree with the float64 numpy reference
(tests/reference_cells.py, written from ONNX's equations) to 1e-12 in float64. onnxruntime reads all of
ONNX's attributes except layout=1 (refused on the CPU): that one runs on ``onnx.reference.ReferenceEvaluator``
(which ignores activations, clip, input_forget and sequence_lens, so it is only used for the default cell).

Read in onnxruntime's source (core/providers/cpu/rnn/uni_directional_lstm.cc, rnn_helpers.cc) and checked
here: clip clamps the gate pre-activations (after bias and peephole), never c before h; input_forget makes
f = 1 - i; o's peephole reads the new c. Alpha/beta are consumed one per activation that takes them, and
where none is given onnxruntime uses LeakyRelu 0.01, HardSigmoid (0.2, 0.5), Elu 1.0 and 0 for all others:
ThresholdedRelu's alpha defaults to 0 there, not to the ThresholdedRelu operator's 1.0, so the cases below
always pass ThresholdedRelu's, ScaledTanh's and Affine's values.
"""

from __future__ import annotations

from importlib.util import find_spec

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lstmscope.engine.fused import build_lstm, engine_name
from lstmscope.engine.stepwise import StepwiseLSTM
from lstmscope.spec import SIGMOID, TANH, Activation, LSTMSpec
from reference_cells import lstm_reference_trace

# onnx and onnxruntime are imported inside the tests that use them, never when pytest collects this file:
# ``import onnx`` loads ml_dtypes, which gives numpy a bfloat16 dtype and so changes how the tests collected
# with this one read bfloat16 safetensors files (tests/test_diff_lazy.py::test_bf16_state_is_still_refused).
needs_onnx = pytest.mark.skipif(find_spec("onnx") is None or find_spec("onnxruntime") is None,
                                reason="onnx and onnxruntime (the dev extra) are the oracle here")

I, H, B, T = 3, 4, 4, 6
LENGTHS = [6, 2, 5, 1]  # unsorted, one full-length sequence, one of length 1
OPSET = 14  # LSTM-14: layout
F32_TOL, F64_TOL = 1e-5, 1e-12

# ONNX activation names -> spec names; alpha/beta defaults ONNX (and onnxruntime) give when none is passed
SPEC_NAMES = {"Sigmoid": "sigmoid", "Tanh": "tanh", "Relu": "relu", "HardSigmoid": "hard_sigmoid",
              "LeakyRelu": "leaky_relu", "ThresholdedRelu": "thresholded_relu", "ScaledTanh": "scaled_tanh",
              "Elu": "elu", "Softsign": "softsign", "Softplus": "softplus", "Affine": "affine"}
PARAMS = {"HardSigmoid": ("alpha", "beta"), "LeakyRelu": ("alpha",), "ThresholdedRelu": ("alpha",),
          "ScaledTanh": ("alpha", "beta"), "Elu": ("alpha",), "Affine": ("alpha", "beta")}
DEFAULTS = {"HardSigmoid": (0.2, 0.5), "LeakyRelu": (0.01, None), "Elu": (1.0, None)}


# ------------------------------------------------------------------------------------------------------
# The ONNX side


def onnx_weights(d: int, *, peephole: bool, seed: int = 0, scale: float = 0.6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = {"W": rng.uniform(-scale, scale, (d, 4 * H, I)), "R": rng.uniform(-scale, scale, (d, 4 * H, H)),
         "B": rng.uniform(-scale, scale, (d, 8 * H))}
    if peephole:
        w["P"] = rng.uniform(-scale, scale, (d, 3 * H))
    return {k: v.astype(np.float32) for k, v in w.items()}


def onnx_inputs(d: int, *, lengths: bool, initial: bool, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {"X": rng.standard_normal((T, B, I)).astype(np.float32)}  # (time, batch, features): layout 0
    if lengths:
        feeds["sequence_lens"] = np.array(LENGTHS, dtype=np.int32)
    if initial:
        feeds["initial_h"] = rng.uniform(-1, 1, (d, B, H)).astype(np.float32)
        feeds["initial_c"] = rng.uniform(-1, 1, (d, B, H)).astype(np.float32)
    return feeds


def onnx_model(direction: str, weights: dict, feeds: dict, *, layout: int = 0, **attrs) -> bytes:
    """A one-node ONNX LSTM: W, R, B (and P) as initializers, X and the optional inputs as graph inputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d = 2 if direction == "bidirectional" else 1
    names = ["X", "W", "R", "B", "sequence_lens" if "sequence_lens" in feeds else "",
             "initial_h" if "initial_h" in feeds else "", "initial_c" if "initial_c" in feeds else "",
             "P" if "P" in weights else ""]
    while names[-1] == "":
        names.pop()
    attrs = {k: v for k, v in attrs.items() if v is not None}
    node = helper.make_node("LSTM", names, ["Y", "Y_h", "Y_c"], direction=direction, hidden_size=H,
                            layout=layout, **attrs)
    graph_inputs = [helper.make_tensor_value_info(k, TensorProto.INT32 if k == "sequence_lens" else TensorProto.FLOAT,
                                                  list(v.shape)) for k, v in feeds.items()]
    y_shape = [T, d, B, H] if layout == 0 else [B, T, d, H]
    state_shape = [d, B, H] if layout == 0 else [B, d, H]
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, y_shape),
               helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, state_shape),
               helper.make_tensor_value_info("Y_c", TensorProto.FLOAT, state_shape)]
    inits = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    graph = helper.make_graph([node], "lstm", graph_inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def run_ort(model: bytes, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def activation_attrs(acts: list[tuple]) -> dict:
    """``activations`` and, for those that take them, ``activation_alpha``/``activation_beta`` in order
    (onnxruntime consumes one value per activation that takes it: a None entry means "its default", which
    only works where no later activation takes a value, as in every case here). ``acts``: (name, alpha, beta)
    for f, g, h, repeated for the reverse direction of a bidirectional node."""
    alphas = [a for name, a, _ in acts if a is not None and "alpha" in PARAMS.get(name, ())]
    betas = [b for name, _, b in acts if b is not None and "beta" in PARAMS.get(name, ())]
    return {"activations": [name for name, _, _ in acts], "activation_alpha": alphas or None,
            "activation_beta": betas or None}


def spec_activation(name: str, alpha: float | None = None, beta: float | None = None) -> Activation:
    """An ONNX activation as the spec names it, ONNX's defaults filled in where the value is omitted."""
    da, db = DEFAULTS.get(name, (None, None))
    takes = PARAMS.get(name, ())
    a = (alpha if alpha is not None else da) if "alpha" in takes else None
    b = (beta if beta is not None else db) if "beta" in takes else None
    a, b = (None if v is None else float(np.float32(v)) for v in (a, b))  # as the node's float attributes hold them
    return Activation(SPEC_NAMES[name], a, b)


# ------------------------------------------------------------------------------------------------------
# This test's own converter and the StepwiseLSTM side

GATES = [0, 2, 3, 1]  # ONNX i, o, f, c -> canonical i, f, g, o
PEEPS = [0, 2, 1]  # ONNX P i, o, f -> canonical i, f, o


def _chunks(a: np.ndarray, order: list[int], n: int) -> np.ndarray:
    return np.concatenate([np.split(a, n, axis=0)[k] for k in order], axis=0)


def canonical(weights: dict, d: int) -> dict[str, np.ndarray]:
    """ONNX W, R, B, P -> nn.LSTM's state_dict names and layout (one layer, d directions)."""
    out = {}
    for j in range(d):
        sfx = "_l0" + ("_reverse" if j else "")
        out["weight_ih" + sfx] = _chunks(weights["W"][j], GATES, 4)
        out["weight_hh" + sfx] = _chunks(weights["R"][j], GATES, 4)
        out["bias_ih" + sfx] = _chunks(weights["B"][j][:4 * H], GATES, 4)
        out["bias_hh" + sfx] = _chunks(weights["B"][j][4 * H:], GATES, 4)
        if "P" in weights:
            out["weight_peephole" + sfx] = _chunks(weights["P"][j], PEEPS, 3)
    return out


def reverse_steps(x: np.ndarray, lengths: list[int]) -> np.ndarray:
    """(time, batch, ...) with each sequence's own first lengths[b] steps reversed (the rest untouched)."""
    out = x.copy()
    for b, n in enumerate(lengths):
        out[:n, b] = x[:n, b][::-1]
    return out


def stepwise_run(module: StepwiseLSTM, x: np.ndarray, lengths, h0, c0, dtype, capture=None):
    """Run (time, batch, I) ``x`` through ``module`` (time-major), packed when ``lengths``; returns numpy
    output (time, batch, D * H) (0 past each length), h_n and c_n (D, batch, H)."""
    xt = torch.from_numpy(x).to(dtype)
    hx = None if h0 is None else (torch.from_numpy(h0).to(dtype), torch.from_numpy(c0).to(dtype))
    if lengths is None:
        out, (h, c) = module(xt, hx, capture=capture)
    else:
        packed = pack_padded_sequence(xt, torch.tensor(lengths), enforce_sorted=False)
        out, (h, c) = module(packed, hx, capture=capture)
        out, _ = pad_packed_sequence(out, total_length=x.shape[0])
    return out.double().numpy(), h.double().numpy(), c.double().numpy()


def make_stepwise(params: dict, d: int, dtype, **cell) -> StepwiseLSTM:
    m = StepwiseLSTM(I, H, bidirectional=d == 2, dtype=dtype, **cell)
    m.load_state_dict({k: torch.from_numpy(v).to(dtype) for k, v in params.items()}, strict=True)
    return m.eval()


def make_stepwise_spec(spec: LSTMSpec, params: dict) -> StepwiseLSTM:
    m = StepwiseLSTM(spec.input_size, spec.hidden_size, num_layers=spec.num_layers, bidirectional=spec.bidirectional,
                     proj_size=spec.proj_size, gate_activation=spec.gate_activation,
                     cell_activation=spec.cell_activation, peephole=spec.peephole, clip=spec.clip,
                     input_forget=spec.input_forget, hidden_activation=spec.hidden_activation)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()}, strict=True)
    return m.eval()


def capture_into(store: dict, lengths_bt: np.ndarray):
    """A capture function writing each StepBlock's i, f, g, o, c, h into ``store[(layer, dir, q)]`` as
    (batch, time, width) float64, NaN past each sequence's length (as the reference)."""
    def capture(block):
        for q in "ifgoch":
            t = getattr(block, q).double().numpy()  # (steps, batch, width)
            a = store.setdefault((block.layer, block.direction, q), np.full((B, T, t.shape[2]), np.nan))
            a[:, block.start:block.start + t.shape[0]] = t.transpose(1, 0, 2)
        for a in store.values():
            a[~lengths_bt] = np.nan
    return capture


def stepwise_like_onnx(direction: str, weights: dict, feeds: dict, dtype, capture=None, **cell):
    """StepwiseLSTM standing in for the ONNX node: Y (time, D, batch, H), Y_h, Y_c (D, batch, H)."""
    d = 2 if direction == "bidirectional" else 1
    params = canonical(weights, d)
    lengths = feeds["sequence_lens"].tolist() if "sequence_lens" in feeds else None
    h0, c0 = feeds.get("initial_h"), feeds.get("initial_c")
    x = feeds["X"]
    if direction == "reverse":
        x = reverse_steps(x, lengths or [T] * B)
    m = make_stepwise(params, d, dtype, **cell)
    out, h, c = stepwise_run(m, x, lengths, h0, c0, dtype, capture)
    if direction == "reverse":
        out = reverse_steps(out, lengths or [T] * B)
    return out.reshape(T, B, d, H).transpose(0, 2, 1, 3), h, c, params, x


# ------------------------------------------------------------------------------------------------------
# The comparisons


def check_against_onnx(direction: str, *, peephole=False, clip=None, input_forget=False, acts=None,
                       lengths=True, initial=True, seed=0):
    """onnxruntime against StepwiseLSTM (float32, 1e-5) and the captured trace against the float64
    reference (1e-12)."""
    d = 2 if direction == "bidirectional" else 1
    weights = onnx_weights(d, peephole=peephole, seed=seed)
    feeds = onnx_inputs(d, lengths=lengths, initial=initial, seed=seed + 1)
    attrs = {"clip": clip, "input_forget": 1 if input_forget else None}
    if acts is not None:
        attrs.update(activation_attrs(acts * d))
    y, y_h, y_c = run_ort(onnx_model(direction, weights, feeds, **attrs), feeds)

    f_act, g_act, h_act = ((spec_activation(*a) for a in acts) if acts is not None else (SIGMOID, TANH, TANH))
    cell = dict(gate_activation=f_act, cell_activation=g_act, peephole=peephole, clip=clip,
                input_forget=input_forget, hidden_activation=None if h_act == g_act else h_act)
    got_y, got_h, got_c, _, _ = stepwise_like_onnx(direction, weights, feeds, torch.float32, **cell)
    scale = max(1.0, float(np.abs(y).max()), float(np.abs(y_c).max()))
    for name, want, got in (("Y", y, got_y), ("Y_h", y_h, got_h), ("Y_c", y_c, got_c)):
        np.testing.assert_allclose(got, want, rtol=0, atol=F32_TOL * scale, err_msg=f"{name} ({direction})")

    lens = feeds["sequence_lens"].tolist() if lengths else [T] * B
    valid = np.arange(T)[None, :] < np.array(lens)[:, None]  # (batch, time)
    store: dict = {}
    _, _, _, params, x = stepwise_like_onnx(direction, weights, feeds, torch.float64,
                                            capture=capture_into(store, valid), **cell)
    want = lstm_reference_trace(params, x.transpose(1, 0, 2), num_layers=1, bidirectional=d == 2,
                                lengths=lens, h0=feeds.get("initial_h"), c0=feeds.get("initial_c"),
                                gate_activation=f_act, cell_activation=g_act, hidden_activation=h_act,
                                clip=clip, input_forget=input_forget)
    assert set(store) == set(want)
    for key, w in want.items():
        np.testing.assert_allclose(store[key], w, rtol=0, atol=F64_TOL * max(1.0, np.nanmax(np.abs(w))),
                                   err_msg=str(key))
    if input_forget:
        np.testing.assert_array_equal(store[(0, 0, "f")], 1.0 - store[(0, 0, "i")])
    return y, y_h, y_c


DIRECTIONS = ["forward", "reverse", "bidirectional"]


@needs_onnx
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("features", [
    {}, {"peephole": True}, {"clip": 0.7}, {"input_forget": True},
    {"peephole": True, "clip": 0.9, "input_forget": True},
    {"peephole": True, "clip": 0.8},
], ids=["default", "peephole", "clip", "input_forget", "all", "peephole_clip"])
def test_cell_features_match_onnxruntime(direction, features):
    check_against_onnx(direction, **features)


@needs_onnx
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_without_lengths_or_initial_state(direction):
    check_against_onnx(direction, peephole=True, clip=1.5, lengths=False, initial=False)


ONNX_ACTIVATIONS = [  # (name, alpha, beta): None takes ONNX's default where there is one
    ("Sigmoid", None, None), ("Tanh", None, None), ("Relu", None, None),
    ("HardSigmoid", None, None), ("HardSigmoid", 0.3, 0.4),
    ("LeakyRelu", None, None), ("LeakyRelu", 0.2, None),
    ("ThresholdedRelu", 0.1, None), ("ScaledTanh", 1.5, 0.7),
    ("Elu", None, None), ("Elu", 0.5, None),
    ("Softsign", None, None), ("Softplus", None, None), ("Affine", 0.8, 0.1),
]


def _act_id(a: tuple) -> str:
    return a[0] + "".join(f"_{v:g}" for v in a[1:] if v is not None)


@needs_onnx
@pytest.mark.parametrize("act", ONNX_ACTIVATIONS, ids=_act_id)
@pytest.mark.parametrize("slot", ["f", "g", "h"])
def test_each_onnx_activation_in_each_slot(act, slot):
    """Each of ONNX's activations as the gate activation (f), the candidate's (g) and the output's (h), the
    other two at their defaults; peepholes and lengths on, both directions."""
    acts = [("Sigmoid", None, None), ("Tanh", None, None), ("Tanh", None, None)]
    acts["fgh".index(slot)] = act
    check_against_onnx("bidirectional", peephole=True, acts=acts)


@needs_onnx
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("acts", [
    [("Sigmoid", None, None), ("Tanh", None, None), ("Relu", None, None)],
    [("HardSigmoid", None, None), ("Softsign", None, None), ("Tanh", None, None)],
    [("Sigmoid", None, None), ("Relu", None, None), ("Affine", 0.5, 0.25)],
], ids=["tanh_relu", "softsign_tanh", "relu_affine"])
def test_distinct_cell_and_output_activations(direction, acts):
    check_against_onnx(direction, peephole=True, clip=2.0, acts=acts)


@needs_onnx
def test_clip_is_on_the_gates_not_on_c():
    """A tight clip and an unbounded output activation: were c clipped before h (as one may read "applied to
    the input of activations"), Y would differ; onnxruntime clips the gate pre-activations only, as we do."""
    acts = [("Sigmoid", None, None), ("Affine", 3.0, 0.0), ("Affine", 1.0, 0.0)]
    _, _, y_c = check_against_onnx("forward", clip=0.5, acts=acts, seed=3)
    assert np.abs(y_c).max() > 0.5  # c outgrew the clip: the check above did see an unclipped c


@needs_onnx
def test_layout_1_is_the_same_numbers_transposed():
    """layout=1 only changes the node's tensor layout (batch first). onnxruntime's CPU LSTM refuses it, so it
    runs on onnx.reference (default cell only: the reference evaluator ignores the other attributes)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    d = 2
    weights = onnx_weights(d, peephole=True)
    feeds = onnx_inputs(d, lengths=False, initial=True)
    y, y_h, y_c = run_ort(onnx_model("bidirectional", weights, feeds), feeds)
    feeds1 = {"X": feeds["X"].transpose(1, 0, 2).copy(), "initial_h": feeds["initial_h"].transpose(1, 0, 2).copy(),
              "initial_c": feeds["initial_c"].transpose(1, 0, 2).copy()}
    model1 = onnx_model("bidirectional", weights, feeds1, layout=1)
    y1, y_h1, y_c1 = ReferenceEvaluator(onnx.load_from_string(model1)).run(None, feeds1)
    np.testing.assert_allclose(y1, y.transpose(2, 0, 1, 3), rtol=0, atol=F32_TOL)  # (batch, time, D, H)
    np.testing.assert_allclose(y_h1, y_h.transpose(1, 0, 2), rtol=0, atol=F32_TOL)  # (batch, D, H)
    np.testing.assert_allclose(y_c1, y_c.transpose(1, 0, 2), rtol=0, atol=F32_TOL)
    # and StepwiseLSTM, batch-first, gives the layout=1 numbers directly
    m = make_stepwise(canonical(weights, d), d, torch.float32, peephole=True)
    m.batch_first = True
    out, (h, c) = m(torch.from_numpy(feeds1["X"]), (torch.from_numpy(feeds["initial_h"]),
                                                    torch.from_numpy(feeds["initial_c"])))
    np.testing.assert_allclose(out.numpy().reshape(B, T, d, H), y1, rtol=0, atol=F32_TOL)
    np.testing.assert_allclose(h.numpy().transpose(1, 0, 2), y_h1, rtol=0, atol=F32_TOL)
    np.testing.assert_allclose(c.numpy().transpose(1, 0, 2), y_c1, rtol=0, atol=F32_TOL)


# ------------------------------------------------------------------------------------------------------
# The spec and the engine choice


def _spec(**kw) -> LSTMSpec:
    base = dict(input_size=I, hidden_size=H, proj_size=0, num_layers=1, bidirectional=True, bias=True, dtype="float32")
    return LSTMSpec(**{**base, **kw})


ONNX_FEATURES = {"peephole": {"peephole": True}, "clip": {"clip": 3.0}, "input_forget": {"input_forget": True},
                 "hidden_activation": {"hidden_activation": Activation("relu")}}


def test_standard_cell_runs_on_nn_lstm():
    spec = _spec()
    assert spec.standard_cell and engine_name(spec) == "fused"
    assert spec.output_activation == TANH
    params = canonical(onnx_weights(2, peephole=False), 2)
    assert type(build_lstm(spec, params, torch.float32)) is torch.nn.LSTM
    # a hidden activation equal to the cell's is still the standard cell
    assert _spec(hidden_activation=TANH).standard_cell


@pytest.mark.parametrize("feature", ONNX_FEATURES)
def test_onnx_features_run_on_the_stepwise_engine(feature):
    spec = _spec(**ONNX_FEATURES[feature])
    assert not spec.standard_cell and engine_name(spec) == "stepwise"
    params = canonical(onnx_weights(2, peephole=spec.peephole), 2)
    assert set(params) == set(spec.expected_shapes())
    m = build_lstm(spec, params, torch.float32)
    assert isinstance(m, StepwiseLSTM)
    assert (m.peephole, m.clip, m.input_forget, m.hidden_activation) == (
        spec.peephole, spec.clip, spec.input_forget, spec.hidden_activation)


def test_spec_fields_round_trip_and_describe():
    spec = _spec(framework="onnx", peephole=True, clip=3.0, input_forget=True,
                 hidden_activation=Activation("scaled_tanh", 1.5, 0.5))
    assert LSTMSpec.from_dict(spec.to_dict()) == spec
    assert spec.output_activation == Activation("scaled_tanh", 1.5, 0.5)
    assert spec.describe_cell() == ("sigmoid gates, tanh cell, scaled_tanh(alpha=1.5, beta=0.5) output, "
                                    "peepholes, clip 3, coupled input and forget gates")
    assert _spec(peephole=True, clip=3.0).describe_cell() == "sigmoid gates, tanh cell, peepholes, clip 3"
    plain = _spec().to_dict()  # written only when set: the other cells' documents are unchanged
    assert not {"peephole", "clip", "input_forget", "hidden_activation"} & set(plain)
    assert LSTMSpec.from_dict(plain) == _spec()  # as metadata written before these fields


def test_peephole_shapes_and_parameter_count():
    plain, peep = _spec(num_layers=2), _spec(num_layers=2, peephole=True)
    extra = {k: v for k, v in peep.expected_shapes().items() if k not in plain.expected_shapes()}
    assert extra == {f"weight_peephole_l{k}{s}": (3 * H,) for k in range(2) for s in ("", "_reverse")}
    assert peep.parameter_count() == plain.parameter_count() + 4 * 3 * H


def test_stepwise_rejects_a_bad_clip_and_repr_names_the_features():
    with pytest.raises(ValueError, match="clip"):
        StepwiseLSTM(I, H, clip=0.0)
    m = StepwiseLSTM(I, H, peephole=True, clip=2.5, input_forget=True, hidden_activation=Activation("relu"))
    assert "peephole=True" in repr(m) and "clip=2.5" in repr(m) and "input_forget=True" in repr(m)
    assert "hidden_activation=relu" in repr(m)
    assert dict(m.named_parameters())["weight_peephole_l0"].shape == (3 * H,)


# ------------------------------------------------------------------------------------------------------
# What ONNX has not, but the stepwise engine does for these cells too: stacked layers, projections, the
# engine's public calls (run_lstm, trace_lstm), and the prepacked recurrent product


def _random_params(spec: LSTMSpec, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.uniform(-0.6, 0.6, shape).astype(spec.dtype) for k, shape in spec.expected_shapes().items()}


STACKED = {
    "peephole_proj": dict(peephole=True, proj_size=2),
    "all_proj": dict(peephole=True, clip=0.8, input_forget=True, proj_size=3,
                     hidden_activation=Activation("softsign")),
    "clip_hard_sigmoid": dict(clip=0.5, gate_activation=Activation("hard_sigmoid", 0.2, 0.5)),
    "input_forget_relu_output": dict(input_forget=True, hidden_activation=Activation("relu")),
}


@pytest.mark.parametrize("case", STACKED)
def test_stacked_layers_and_projection_against_the_reference(case):
    """Two bidirectional layers, packed lengths and an initial state through the engine's public calls,
    against the float64 reference: run_lstm's outputs and trace_lstm's every step, 1e-12."""
    from lstmscope.engine import run_lstm
    from lstmscope.engine.trace import trace_lstm
    from reference_cells import lstm_reference_cells

    spec = _spec(num_layers=2, dtype="float64", **STACKED[case])
    params = _random_params(spec)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((B, T, I))  # (batch, time, features)
    n = spec.num_layers * spec.num_directions
    h0, c0 = rng.uniform(-1, 1, (n, B, spec.output_size)), rng.uniform(-1, 1, (n, B, H))
    lengths = np.array(LENGTHS)
    kw = dict(num_layers=2, bidirectional=True, proj_size=spec.proj_size, lengths=lengths, h0=h0, c0=c0,
              gate_activation=spec.gate_activation, cell_activation=spec.cell_activation,
              hidden_activation=spec.output_activation, clip=spec.clip, input_forget=spec.input_forget)
    want_out, want_h, want_c, _ = lstm_reference_cells(params, x, **kw)
    got = run_lstm(spec, params, x, lengths=lengths, h0=h0, c0=c0)
    for name, g, w in (("output", got.output, want_out), ("h_n", got.h_n, want_h), ("c_n", got.c_n, want_c)):
        np.testing.assert_allclose(g, w, rtol=0, atol=F64_TOL, err_msg=name)
    want = lstm_reference_trace(params, x, **kw)
    trace = trace_lstm(spec, params, x, lengths=lengths, h0=h0, c0=c0)
    assert set(trace) == set(want)
    for key, w in want.items():
        np.testing.assert_array_equal(np.isnan(trace[key]), np.isnan(w), err_msg=f"padding of {key}")
        np.testing.assert_allclose(trace[key], w, rtol=0, atol=F64_TOL, err_msg=str(key))


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("prepack", ["prepacked", "plain"])
def test_prepacked_recurrent_product_runs_these_cells(prepack, monkeypatch):
    """float32 on the CPU: the oneDNN prepacked product (the size rule lifted so this small model takes it)
    and the plain one give the ONNX cell, against the float64 reference, 1e-5."""
    from lstmscope.engine import stepwise

    monkeypatch.setattr(stepwise, "_prepack_failure", None)
    monkeypatch.setattr(stepwise, "PREPACK_MIN_WEIGHT", 0)
    monkeypatch.setattr(stepwise, "PREPACK_MIN_MACS", 0)
    if prepack == "plain":
        monkeypatch.setenv(stepwise.PREPACK_ENV, "0")
    else:
        monkeypatch.delenv(stepwise.PREPACK_ENV, raising=False)
        ops = getattr(torch.ops, "mkldnn", None)
        if not (torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_linear_weight")
                and hasattr(ops, "_linear_pointwise")):
            pytest.skip("this torch has no oneDNN linear ops: only the plain recurrent product can run")
    cell = dict(peephole=True, clip=1.0, input_forget=True, hidden_activation=Activation("softsign"))
    spec = _spec(num_layers=2, proj_size=2, **cell)
    params = _random_params(spec, seed=7)
    m = make_stepwise_spec(spec, params)
    x = np.random.default_rng(8).standard_normal((T, B, I)).astype(np.float32)
    store: dict = {}
    valid = np.arange(T)[None, :] < np.array(LENGTHS)[:, None]
    out, h, c = stepwise_run(m, x, LENGTHS, None, None, torch.float32, capture_into(store, valid))
    assert stepwise.last_recurrent_path == prepack
    want = lstm_reference_trace(params, x.transpose(1, 0, 2), num_layers=2, bidirectional=True, proj_size=2,
                                lengths=LENGTHS, hidden_activation=Activation("softsign"), clip=1.0,
                                input_forget=True)
    for key, w in want.items():
        np.testing.assert_allclose(store[key], w, rtol=0, atol=F32_TOL, err_msg=str(key))
    top = np.concatenate([want[(1, 0, "h")], want[(1, 1, "h")]], axis=2).transpose(1, 0, 2)  # (time, batch, 2P)
    np.testing.assert_allclose(out, np.nan_to_num(top, nan=0.0), rtol=0, atol=F32_TOL)

