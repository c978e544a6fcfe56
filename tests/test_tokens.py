"""Token-id input: integer ids looked up in the checkpoint's own embedding matrix, then the LSTM.

Truth: ``torch.nn.Embedding`` followed by ``torch.nn.LSTM`` run directly here (packed with
``enforce_sorted=False`` for end padding; each sequence's last ``L[b]`` steps alone for front padding),
and onnxruntime running the ONNX graphs (exported here, or the real files with the LSTM node's outputs
added as graph outputs). lstmscope's states (export-state / trace safetensors) must equal them.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from conftest import real_checkpoints_dir
from helpers import assert_one_error_line
from test_onnx_reader import ort, ort_run  # noqa: F401 (ort: session fixture)

V, E, H, LAYERS = 11, 5, 4, 2  # vocabulary, embedding width (= the LSTM's input_size), hidden, layers
B, T = 3, 6
TOL = 1e-6
ONNX_TOL = 1e-5


class TokenLSTM(nn.Module):
    """nn.Embedding + bidirectional 2-layer nn.LSTM; forward returns the LSTM's own outputs."""

    def __init__(self, decoder: bool = False):
        super().__init__()
        self.embedding = nn.Embedding(V, E)
        self.lstm = nn.LSTM(E, H, num_layers=LAYERS, bidirectional=True, batch_first=True)
        if decoder:  # weight (7, E): a second 2-D float tensor of width input_size, not named like an embedding
            self.decoder = nn.Linear(E, 7)

    def forward(self, ids):
        y, (h, c) = self.lstm(self.embedding(ids))
        return y, h, c


def torch_truth(model: TokenLSTM, ids_bt: np.ndarray, lengths=None):
    """(output (B, T, 2H), h_n (L*D, B, H), c_n) as float64, from nn.Embedding then nn.LSTM; padded
    outputs are zero (pad_packed_sequence) when lengths are given."""
    ids = torch.from_numpy(np.asarray(ids_bt, dtype=np.int64))
    with torch.no_grad():
        x = model.embedding(ids)
        if lengths is None:
            y, (h, c) = model.lstm(x)
        else:
            packed = pack_padded_sequence(x, torch.as_tensor(np.asarray(lengths, dtype=np.int64)),
                                          batch_first=True, enforce_sorted=False)
            yp, (h, c) = model.lstm(packed)
            y, _ = pad_packed_sequence(yp, batch_first=True, total_length=ids.shape[1])
    return tuple(t.numpy().astype(np.float64) for t in (y, h, c))


def ids_array(shape, seed=0, high=V, dtype=np.int64):
    return np.random.default_rng(seed).integers(0, high, shape).astype(dtype)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{name: (TokenLSTM, path)}: 'plain' (embedding + lstm) and 'decoder' (also decoder.weight (7, E))."""
    d = tmp_path_factory.mktemp("tokens")
    out = {}
    for name, seed, dec in (("plain", 0, False), ("decoder", 1, True)):
        torch.manual_seed(seed)
        m = TokenLSTM(decoder=dec).eval()
        path = d / f"{name}.pt"
        torch.save(m.state_dict(), path)
        out[name] = (m, path)
    return out


def export_state(invoke, ck, inp, tmp_path, *extra, name="state.safetensors"):
    out = tmp_path / name
    r = invoke("export-state", ck, inp, "-o", out, "--include-output", "--force", "--quiet", *extra)
    assert r.exit_code == 0, (r.exit_code, r.stderr)
    assert "Traceback" not in r.stderr
    return load_file(str(out)), r


def assert_close(got, want, tol=TOL):
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)


def assert_states(state, truth, tol=TOL, output=True):
    y, h, c = truth
    assert_close(state["h_n"], h, tol)
    assert_close(state["c_n"], c, tol)
    if output:
        assert_close(state["output"], y, tol)


# --- 1. PyTorch state_dicts: ids through the checkpoint's embedding ------------------------------------

@pytest.mark.parametrize("which", ["plain", "decoder"])
@pytest.mark.parametrize("explicit", [False, True])
def test_batch_of_ids_equals_embedding_then_lstm(invoke, tmp_path, models, one_torch_thread, which, explicit):
    model, ck = models[which]
    ids = ids_array((B, T), seed=1)
    ids[0, 0], ids[1, 1] = 0, V - 1  # both ends of the vocabulary
    path = tmp_path / "ids.npy"
    np.save(path, ids)
    extra = ["--embedding", "embedding.weight"] if explicit else []
    state, r = export_state(invoke, ck, path, tmp_path, *extra)
    assert_states(state, torch_truth(model, ids))


def test_one_d_ids_are_one_sequence(invoke, tmp_path, models, one_torch_thread):
    model, ck = models["plain"]
    ids = ids_array((T,), seed=2)
    path = tmp_path / "one.npy"
    np.save(path, ids)
    state, _ = export_state(invoke, ck, path, tmp_path)
    y, h, c = torch_truth(model, ids[None])
    assert_close(state["h_n"], h)
    assert_close(state["c_n"], c)
    assert_close(np.asarray(state["output"]).reshape(y.shape), y)


def test_time_major_ids(invoke, tmp_path, models, one_torch_thread):
    model, ck = models["plain"]
    ids_tb = ids_array((T, B), seed=3)
    path = tmp_path / "tm.npy"
    np.save(path, ids_tb)
    state, _ = export_state(invoke, ck, path, tmp_path, "--time-major")
    y, h, c = torch_truth(model, ids_tb.T)
    assert_close(state["h_n"], h)
    assert_close(state["c_n"], c)
    assert_close(state["output"], y)  # snapshots hold output (B, T, D*H) whatever the input's layout


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.int16, np.uint16])
def test_id_dtypes(invoke, tmp_path, models, one_torch_thread, dtype):
    model, ck = models["plain"]
    ids = ids_array((B, T), seed=4, dtype=dtype)
    path = tmp_path / "ids.npy"
    np.save(path, ids)
    state, _ = export_state(invoke, ck, path, tmp_path)
    assert_states(state, torch_truth(model, ids))


def test_npz_ids_and_lengths_end_padding(invoke, tmp_path, models, one_torch_thread):
    model, ck = models["plain"]
    ids = ids_array((B, T), seed=5)
    lengths = np.array([4, T, 1])
    path = tmp_path / "in.npz"
    np.savez(path, ids=ids, lengths=lengths)
    state, _ = export_state(invoke, ck, path, tmp_path)
    assert_states(state, torch_truth(model, ids, lengths))
    r = invoke("run", ck, path, "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["input"]["key"] == "ids" and doc["input"]["lengths"] == [4, T, 1]
    assert doc["ok"] is True


# --- 2. the note and the JSON --------------------------------------------------------------------------

def test_note_names_auto_picked_tensor(invoke, tmp_path, models):
    _, ck = models["decoder"]
    path = tmp_path / "ids.npy"
    np.save(path, ids_array((B, T), seed=6))
    r = invoke("run", ck, path, "--quiet")
    assert r.exit_code == 0, r.stderr
    notes = [ln for ln in r.stderr.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1, r.stderr
    assert "embedding.weight" in notes[0] and "decoder.weight" not in notes[0]
    assert "Error" not in r.stderr and "Traceback" not in r.stderr


def test_no_note_with_explicit_embedding(invoke, tmp_path, models):
    _, ck = models["decoder"]
    path = tmp_path / "ids.npy"
    np.save(path, ids_array((B, T), seed=6))
    r = invoke("run", ck, path, "--quiet", "--embedding", "embedding.weight")
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""  # the tensor was named: nothing to say about the pick


def test_explicit_embedding_picks_the_named_tensor(invoke, tmp_path, models, one_torch_thread):
    """--embedding decoder.weight (7, E) is used as the table: ids index decoder.weight's rows."""
    model, ck = models["decoder"]
    ids = ids_array((B, T), seed=7, high=7)
    path = tmp_path / "ids.npy"
    np.save(path, ids)
    state, _ = export_state(invoke, ck, path, tmp_path, "--embedding", "decoder.weight")
    x = torch.from_numpy(model.decoder.weight.detach().numpy()[ids])
    with torch.no_grad():
        y, (h, c) = model.lstm(x)
    assert_states(state, tuple(t.numpy().astype(np.float64) for t in (y, h, c)))


def test_run_json_describes_embedding(invoke, tmp_path, models):
    _, ck = models["decoder"]
    path = tmp_path / "ids.npy"
    np.save(path, ids_array((B, T), seed=8))
    r = invoke("run", ck, path, "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] is True
    assert doc["checks"] and all(c["ok"] for c in doc["checks"])
    inp = doc["input"]
    assert inp["tokens"] is True
    assert (inp["batch"], inp["time"], inp["features"]) == (B, T, E)
    emb = inp["embedding"]
    assert emb["name"] == "embedding.weight"
    assert (emb["vocab"], emb["width"]) == (V, E)
    assert doc["shapes"]["h_n"] == [LAYERS * 2, B, H]
    assert doc["shapes"]["output"] == [B, T, 2 * H]


# --- 3. bad input: one Error line, exit 2 --------------------------------------------------------------

@pytest.mark.parametrize("bad,pos", [(-1, (0, 2)), (V, (2, 0)), (-3, (1, 5)), (V + 100, (2, 3))])
def test_id_out_of_range(invoke, tmp_path, models, bad, pos):
    _, ck = models["plain"]
    ids = ids_array((B, T), seed=9)
    ids[pos] = bad
    path = tmp_path / "bad_ids.npy"
    np.save(path, ids)
    line = assert_one_error_line(invoke("run", ck, path), path, str(bad))
    assert f"[{pos[0]}, {pos[1]}]" in line or (f"sequence {pos[0]}" in line and f"step {pos[1]}" in line), line


def test_first_bad_id_is_named(invoke, tmp_path, models):
    _, ck = models["plain"]
    ids = ids_array((B, T), seed=10)
    ids[0, 4] = -7
    ids[2, 1] = V + 5
    path = tmp_path / "two_bad.npy"
    np.save(path, ids)
    line = assert_one_error_line(invoke("run", ck, path), path, "-7", "[0, 4]")
    assert str(V + 5) not in line


def test_bad_id_time_major_position(invoke, tmp_path, models):
    """(T, B) ids with a bad id at file [t=4, b=1]: the message must point at sequence 1, step 4."""
    _, ck = models["plain"]
    ids_tb = ids_array((T, B), seed=11)
    ids_tb[4, 1] = V
    path = tmp_path / "tm_bad.npy"
    np.save(path, ids_tb)
    line = assert_one_error_line(invoke("run", ck, path, "--time-major"), path, str(V))
    assert "sequence 1" in line and "step 4" in line, line


def test_bad_id_leaves_no_export_file(invoke, tmp_path, models):
    _, ck = models["plain"]
    ids = ids_array((B, T), seed=12)
    ids[1, 3] = V
    path = tmp_path / "bad_ids.npy"
    np.save(path, ids)
    out = tmp_path / "never.safetensors"
    assert_one_error_line(invoke("export-state", ck, path, "-o", out, "--include-output"), path, str(V), "[1, 3]")
    assert not out.exists()
    assert list(tmp_path.glob("never*")) == []


def _save_sd(path: Path, extra: dict[str, torch.Tensor]) -> Path:
    torch.manual_seed(3)
    lstm = nn.LSTM(E, H, num_layers=1, batch_first=True)
    sd = {f"lstm.{k}": v for k, v in lstm.state_dict().items()}
    sd.update(extra)
    torch.save(sd, path)
    return path


def test_no_embedding_candidate(invoke, tmp_path):
    ck = _save_sd(tmp_path / "bare.pt", {})
    path = tmp_path / "ids.npy"
    np.save(path, ids_array((B, T), seed=13))
    assert_one_error_line(invoke("run", ck, path), path, "--embedding")
    out = tmp_path / "out.safetensors"
    assert_one_error_line(invoke("export-state", ck, path, "-o", out), path, "--embedding")
    assert not out.exists()


def test_one_candidate_not_named_like_embedding(invoke, tmp_path):
    ck = _save_sd(tmp_path / "one.pt", {"decoder.weight": torch.randn(7, E)})
    path = tmp_path / "ids.npy"
    np.save(path, ids_array((B, T), seed=14, high=7))
    assert_one_error_line(invoke("run", ck, path), path, "--embedding", "decoder.weight")


def test_two_candidates_neither_named_like_embedding(invoke, tmp_path):
    ck = _save_sd(tmp_path / "neither.pt", {"decoder.weight": torch.randn(7, E), "proj.weight": torch.randn(9, E)})
    path = tmp_path / "ids.npy"
    np.save(path, ids_array((B, T), seed=15, high=7))
    assert_one_error_line(invoke("run", ck, path), path, "--embedding", "decoder.weight", "proj.weight")
    out = tmp_path / "out.safetensors"
    assert_one_error_line(invoke("export-state", ck, path, "-o", out), path, "--embedding")
    assert not out.exists()


def test_two_candidates_both_named_like_embedding(invoke, tmp_path):
    ck = _save_sd(tmp_path / "both.pt", {"word_embedding.weight": torch.randn(V, E),
                                          "pos_emb.weight": torch.randn(T, E)})
    path = tmp_path / "ids.npy"
    np.save(path, ids_array((B, T), seed=16, high=T))
    assert_one_error_line(invoke("run", ck, path), path, "--embedding", "word_embedding.weight", "pos_emb.weight")


def test_two_candidates_resolved_by_embedding_option(invoke, tmp_path, one_torch_thread):
    table = torch.randn(V, E)
    ck = _save_sd(tmp_path / "both.pt", {"word_embedding.weight": table, "pos_emb.weight": torch.randn(T, E)})
    sd = torch.load(ck, weights_only=True)
    lstm = nn.LSTM(E, H, batch_first=True)
    lstm.load_state_dict({k[len("lstm."):]: v for k, v in sd.items() if k.startswith("lstm.")})
    ids = ids_array((B, T), seed=17)
    path = tmp_path / "ids.npy"
    np.save(path, ids)
    state, _ = export_state(invoke, ck, path, tmp_path, "--embedding", "word_embedding.weight")
    with torch.no_grad():
        y, (h, c) = lstm(table[torch.from_numpy(ids)])
    assert_states(state, tuple(t.numpy().astype(np.float64) for t in (y, h, c)))


def test_embedding_option_missing_key(invoke, tmp_path, models):
    _, ck = models["plain"]
    path = tmp_path / "ids.npy"
    np.save(path, ids_array((B, T), seed=18))
    r = invoke("run", ck, path, "--embedding", "no_such.weight")
    assert_one_error_line(r, None, "no_such.weight", "embedding.weight")  # and the tensors it could have named


def test_embedding_option_wrong_width(invoke, tmp_path, models):
    _, ck = models["plain"]
    path = tmp_path / "ids.npy"
    np.save(path, ids_array((B, T), seed=19))
    key = "lstm.weight_hh_l0"  # (4H, H) = (16, 4): width 4, input_size is 5
    r = invoke("run", ck, path, "--embedding", key)
    assert_one_error_line(r, None, key, str(E))


def test_embedding_option_with_float_input(invoke, tmp_path, models):
    _, ck = models["plain"]
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).standard_normal((B, T, E)).astype(np.float32))
    r = invoke("run", ck, path, "--embedding", "embedding.weight")
    assert_one_error_line(r, None, "--embedding")


def test_padding_pre_without_lengths(invoke, tmp_path, models):
    _, ck = models["plain"]
    path = tmp_path / "ids.npy"
    np.save(path, ids_array((B, T), seed=20))
    r = invoke("run", ck, path, "--padding", "pre")
    assert_one_error_line(r, None, "--padding", "length")


def test_no_mask_with_mask_value(invoke, tmp_path, models):
    _, ck = models["plain"]
    path = tmp_path / "ids.npy"
    np.save(path, ids_array((B, T), seed=21))
    r = invoke("run", ck, path, "--no-mask", "--mask-value", "0")
    assert_one_error_line(r, None, "--no-mask", "--mask-value")


def test_bad_padding_value(invoke, tmp_path, models):
    _, ck = models["plain"]
    path = tmp_path / "ids.npy"
    np.save(path, ids_array((B, T), seed=22))
    np.save(tmp_path / "len.npy", np.array([2, 3, 4]))
    r = invoke("run", ck, path, "--padding", "middle", "--lengths", tmp_path / "len.npy")
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    assert "Traceback" not in r.stderr and "middle" in r.stderr


# --- 4. ONNX export of Embedding + LSTM -----------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory, models):
    """The 'plain' model exported with torch.onnx.export: ids (B, T) int64 in, y, h, c out."""
    pytest.importorskip("onnx")
    model, ck = models["plain"]
    path = tmp_path_factory.mktemp("tok_onnx") / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, 4, dtype=torch.int64),), str(path), dynamo=False,
                          input_names=["ids"], output_names=["y", "h", "c"], opset_version=14,
                          dynamic_axes={"ids": {0: "B", 1: "T"}, "y": {0: "B", 1: "T"}, "h": {1: "B"},
                                        "c": {1: "B"}})
    return model, ck, path


def test_onnx_ids_equal_onnxruntime(invoke, tmp_path, onnx_model, ort, one_torch_thread):
    model, _, path = onnx_model
    ids = ids_array((B, T), seed=23)
    ip = tmp_path / "ids.npy"
    np.save(ip, ids)
    state, _ = export_state(invoke, path, ip, tmp_path, "--layout", "torch")
    want = ort_run(ort, path.read_bytes(), {"ids": ids})
    assert_close(state["h_n"], want["h"].astype(np.float64), ONNX_TOL)
    assert_close(state["c_n"], want["c"].astype(np.float64), ONNX_TOL)
    assert_close(state["output"], want["y"].astype(np.float64), ONNX_TOL)
    # and onnxruntime agrees with torch itself (the export is faithful)
    _, h, _ = torch_truth(model, ids)
    assert_close(want["h"].astype(np.float64), h, ONNX_TOL)


def test_onnx_int32_ids(invoke, tmp_path, onnx_model, ort):
    _, _, path = onnx_model
    ids = ids_array((2, 4), seed=24)
    ip = tmp_path / "ids.npy"
    np.save(ip, ids.astype(np.int32))
    state, _ = export_state(invoke, path, ip, tmp_path, "--layout", "torch")
    want = ort_run(ort, path.read_bytes(), {"ids": ids})
    assert_close(state["h_n"], want["h"].astype(np.float64), ONNX_TOL)


def test_onnx_float_whole_numbers_refused(invoke, tmp_path, onnx_model):
    _, _, path = onnx_model
    ip = tmp_path / "float_ids.npy"
    np.save(ip, ids_array((B, T), seed=25).astype(np.float32))  # (B, T) 2-D: width T != input_size
    line = assert_one_error_line(invoke("run", path, ip), ip)
    assert "integer" in line, line


def test_onnx_out_of_range_id(invoke, tmp_path, onnx_model):
    _, _, path = onnx_model
    ids = ids_array((B, T), seed=26)
    ids[2, 5] = V
    ip = tmp_path / "bad.npy"
    np.save(ip, ids)
    assert_one_error_line(invoke("run", path, ip), ip, str(V), "[2, 5]")


# --- 5. the real files ------------------------------------------------------------------------------------

REAL = real_checkpoints_dir()
TRACT = REAL / "tract_byte_sb_bidi_lstm" / "model.onnx"
EMOTION = REAL / "um_emotion_bilstm_attn" / "emotion_bilstm_attention.pt"


@pytest.mark.skipif(not TRACT.is_file(), reason="real checkpoints absent (LSTMSCOPE_REAL_CHECKPOINTS)")
def test_real_tract_byte_ids(invoke, tmp_path, ort):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    model = onnx.load(str(TRACT))
    node = next(n for n in model.graph.node if n.op_type == "LSTM" and n.name == "LSTM_9")
    _, y_h, y_c = node.output[:3]
    inp = model.graph.input[0]
    assert inp.name == "input"
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    elem = inp.type.tensor_type.elem_type
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
    for name in (y_h, y_c):
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    batch, length = 2, 7
    shape = (batch, length) if dims == ["batch", "length"] else (length, batch)
    ids = np.random.default_rng(27).integers(0, 256, shape).astype(np_dtype)
    ids.flat[0], ids.flat[-1] = 0, 255
    want = ort_run(ort, model.SerializeToString(), {"input": ids})

    ip = tmp_path / "bytes.npy"
    np.save(ip, ids if shape == (batch, length) else ids.T)
    state, r = export_state(invoke, TRACT, ip, tmp_path, "--module", "LSTM_9", "--layout", "torch")
    assert_close(state["h_n"], want[y_h].astype(np.float64), ONNX_TOL)
    assert_close(state["c_n"], want[y_c].astype(np.float64), ONNX_TOL)

    run = invoke("run", TRACT, ip, "--module", "LSTM_9", "--json")
    assert run.exit_code == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["ok"] is True and all(c["ok"] for c in doc["checks"])
    assert doc["input"]["tokens"] is True
    assert doc["input"]["embedding"]["vocab"] == 256 and doc["input"]["embedding"]["width"] == 32
    assert doc["input"]["embedding"]["name"] == "embedding.weight"


@pytest.mark.skipif(not EMOTION.is_file(), reason="real checkpoints absent (LSTMSCOPE_REAL_CHECKPOINTS)")
def test_real_emotion_bilstm_ids(invoke, tmp_path, one_torch_thread):
    sd = torch.load(EMOTION, weights_only=True)["state_dict"]
    table = sd["embedding.weight"]
    vocab = table.shape[0]
    lstm = nn.LSTM(table.shape[1], sd["bilstm.weight_hh_l0"].shape[1], bidirectional=True, batch_first=True)
    lstm.load_state_dict({k[len("bilstm."):]: v for k, v in sd.items() if k.startswith("bilstm.")})
    lstm.eval()
    ids = np.random.default_rng(28).integers(0, vocab, (B, 9))
    ids[0, 0], ids[1, 1] = 0, vocab - 1
    ip = tmp_path / "ids.npy"
    np.save(ip, ids)
    state, r = export_state(invoke, EMOTION, ip, tmp_path, "--module", "state_dict.bilstm")
    notes = [ln for ln in r.stderr.splitlines() if ln.startswith("note:") and "token ids" in ln]
    assert notes and "state_dict.embedding.weight" in notes[0], r.stderr
    with torch.no_grad():
        y, (h, c) = lstm(table[torch.from_numpy(ids)])
    assert_states(state, tuple(t.numpy().astype(np.float64) for t in (y, h, c)), tol=1e-5)

    run = invoke("run", EMOTION, ip, "--module", "state_dict.bilstm", "--json")
    assert run.exit_code == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["ok"] is True
    assert doc["input"]["embedding"]["name"] == "state_dict.embedding.weight"
    bad = tmp_path / "bad.npy"
    ids[1, 2] = vocab
    np.save(bad, ids)
    assert_one_error_line(invoke("run", EMOTION, bad, "--module", "state_dict.bilstm"), bad, str(vocab), "[1, 2]")


@pytest.mark.skipif(not EMOTION.is_file(), reason="real checkpoints absent (LSTMSCOPE_REAL_CHECKPOINTS)")
def test_real_emotion_other_candidate_by_name(invoke, tmp_path):
    """state_dict.classifier.3.weight is (6, 96): a legal table of width input_size when named."""
    sd = torch.load(EMOTION, weights_only=True)["state_dict"]
    table = sd["classifier.3.weight"]
    lstm = nn.LSTM(table.shape[1], sd["bilstm.weight_hh_l0"].shape[1], bidirectional=True, batch_first=True)
    lstm.load_state_dict({k[len("bilstm."):]: v for k, v in sd.items() if k.startswith("bilstm.")})
    ids = np.random.default_rng(29).integers(0, table.shape[0], (2, 5))
    ip = tmp_path / "ids.npy"
    np.save(ip, ids)
    state, _ = export_state(invoke, EMOTION, ip, tmp_path, "--module", "state_dict.bilstm",
                            "--embedding", "state_dict.classifier.3.weight")
    with torch.no_grad():
        y, (h, c) = lstm(table[torch.from_numpy(ids)])
    assert_states(state, tuple(t.numpy().astype(np.float64) for t in (y, h, c)), tol=1e-5)


# --- 6. --padding pre ------------------------------------------------------------------------------------

def test_padding_pre_equals_last_steps_alone(invoke, tmp_path, models, one_torch_thread):
    model, ck = models["plain"]
    ids = ids_array((B, T), seed=30)
    lengths = np.array([3, T, 1])
    ip, lp = tmp_path / "ids.npy", tmp_path / "len.npy"
    np.save(ip, ids)
    np.save(lp, lengths)
    state, _ = export_state(invoke, ck, ip, tmp_path, "--lengths", lp, "--padding", "pre")
    out = np.asarray(state["output"], dtype=np.float64)
    assert out.shape == (B, T, 2 * H)
    for b, n in enumerate(lengths):
        y, h, c = torch_truth(model, ids[b:b + 1, T - n:])
        assert_close(state["h_n"][:, b], h[:, 0])
        assert_close(state["c_n"][:, b], c[:, 0])
        assert_close(out[b, T - n:], y[0])
        assert np.all(out[b, :T - n] == 0), out[b, :T - n]
        # forward h_n is output at the last step, backward h_n at the first real step
        assert_close(state["h_n"][-2, b], out[b, T - 1, :H])
        assert_close(state["h_n"][-1, b], out[b, T - n, H:])


def test_padding_pre_run_json_checks(invoke, tmp_path, models):
    _, ck = models["plain"]
    ip, lp = tmp_path / "ids.npy", tmp_path / "len.npy"
    np.save(ip, ids_array((B, T), seed=31))
    np.save(lp, np.array([2, 5, T]))
    r = invoke("run", ck, ip, "--lengths", lp, "--padding", "pre", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] is True and doc["checks"]
    for check in doc["checks"]:
        assert check["ok"] is True
        want = [T - 1] * B if check["direction"] == "forward" else [T - 2, T - 5, 0]
        assert check["output_time_index"] == want, check


def test_padding_pre_float_input(invoke, tmp_path, models, one_torch_thread):
    """The same front padding with float features (the embedding looked up here)."""
    model, ck = models["plain"]
    ids = ids_array((B, T), seed=32)
    with torch.no_grad():
        x = model.embedding(torch.from_numpy(ids)).numpy()
    lengths = np.array([4, 2, T])
    ip, lp = tmp_path / "x.npy", tmp_path / "len.npy"
    np.save(ip, x)
    np.save(lp, lengths)
    state, _ = export_state(invoke, ck, ip, tmp_path, "--lengths", lp, "--padding", "pre")
    for b, n in enumerate(lengths):
        _, h, c = torch_truth(model, ids[b:b + 1, T - n:])
        assert_close(state["h_n"][:, b], h[:, 0])
        assert_close(state["c_n"][:, b], c[:, 0])


# --- 7. trace and compare --------------------------------------------------------------------------------

def test_trace_token_ids(invoke, tmp_path, models, one_torch_thread):
    model, ck = models["plain"]
    ids = ids_array((B, T), seed=33)
    ip, out = tmp_path / "ids.npy", tmp_path / "trace.safetensors"
    np.save(ip, ids)
    r = invoke("trace", ck, ip, "-o", out, "--quiet")
    assert r.exit_code == 0, r.stderr
    tr = load_file(str(out))
    y, h, c = torch_truth(model, ids)
    assert_close(tr["layer1/forward/h"], y[:, :, :H])
    assert_close(tr["layer1/backward/h"], y[:, :, H:])
    assert_close(tr["layer1/forward/c"][:, -1], c[2])
    assert_close(tr["layer1/backward/c"][:, 0], c[3])
    assert_close(tr["layer0/forward/h"][:, -1], h[0])
    assert_close(tr["layer0/backward/h"][:, 0], h[1])


def test_compare_torch_and_onnx_on_ids(invoke, tmp_path, onnx_model):
    _, ck, path = onnx_model
    ip = tmp_path / "ids.npy"
    np.save(ip, ids_array((B, T), seed=34))
    r = invoke("compare", ck, path, ip, "--json")
    assert r.exit_code == 0, (r.exit_code, r.stdout[-2000:], r.stderr)
    assert "Traceback" not in r.stderr


def test_compare_detects_different_embedding(invoke, tmp_path, models, onnx_model):
    """'decoder' has another embedding and LSTM: compare on the same ids must not say equal (exit 1)."""
    _, ck_other = models["decoder"]
    _, _, path = onnx_model
    ip = tmp_path / "ids.npy"
    np.save(ip, ids_array((B, T), seed=35))
    r = invoke("compare", ck_other, path, ip)
    assert r.exit_code == 1, (r.exit_code, r.stderr)


# --- more combinations: front padding with streaming, all layers, time-major, ONNX, trace ----------------

def _assert_pre_padded(state, model, ids, lengths, tol=TOL, output=True):
    out = np.asarray(state["output"], dtype=np.float64) if output else None
    for b, n in enumerate(lengths):
        y, h, c = torch_truth(model, ids[b:b + 1, T - n:])
        assert_close(state["h_n"][:, b], h[:, 0], tol)
        assert_close(state["c_n"][:, b], c[:, 0], tol)
        if output:
            assert_close(out[b, T - n:], y[0], tol)
            assert np.all(out[b, :T - n] == 0), out[b, :T - n]


@pytest.mark.parametrize("extra", [["--chunk-size", "2"], ["--chunk-size", "1"], ["--dtype", "float64"]])
def test_padding_pre_with_other_options(invoke, tmp_path, models, one_torch_thread, extra):
    model, ck = models["plain"]
    ids = ids_array((B, T), seed=40)
    lengths = np.array([3, T, 1])
    ip, lp = tmp_path / "ids.npy", tmp_path / "len.npy"
    np.save(ip, ids)
    np.save(lp, lengths)
    state, _ = export_state(invoke, ck, ip, tmp_path, "--lengths", lp, "--padding", "pre", *extra)
    _assert_pre_padded(state, model, ids, lengths)


def test_padding_pre_time_major(invoke, tmp_path, models, one_torch_thread):
    model, ck = models["plain"]
    ids = ids_array((B, T), seed=41)
    lengths = np.array([2, 5, T])
    ip, lp = tmp_path / "tm.npy", tmp_path / "len.npy"
    np.save(ip, np.ascontiguousarray(ids.T))
    np.save(lp, lengths)
    state, _ = export_state(invoke, ck, ip, tmp_path, "--lengths", lp, "--padding", "pre", "--time-major")
    _assert_pre_padded(state, model, ids, lengths)


def test_padding_pre_lengths_inside_npz(invoke, tmp_path, models, one_torch_thread):
    model, ck = models["plain"]
    ids = ids_array((B, T), seed=42)
    lengths = np.array([4, 1, 5])
    ip = tmp_path / "in.npz"
    np.savez(ip, ids=ids, lengths=lengths)
    state, _ = export_state(invoke, ck, ip, tmp_path, "--padding", "pre")
    _assert_pre_padded(state, model, ids, lengths)


def test_padding_pre_onnx(invoke, tmp_path, onnx_model, one_torch_thread):
    model, _, path = onnx_model
    ids = ids_array((B, T), seed=43)
    lengths = np.array([3, T, 2])
    ip, lp = tmp_path / "ids.npy", tmp_path / "len.npy"
    np.save(ip, ids)
    np.save(lp, lengths)
    state, _ = export_state(invoke, path, ip, tmp_path, "--lengths", lp, "--padding", "pre", "--layout", "torch")
    _assert_pre_padded(state, model, ids, lengths, tol=ONNX_TOL)


def test_padding_pre_trace(invoke, tmp_path, models, one_torch_thread):
    model, ck = models["plain"]
    ids = ids_array((B, T), seed=44)
    lengths = np.array([3, T, 1])
    ip, lp, out = tmp_path / "ids.npy", tmp_path / "len.npy", tmp_path / "trace.safetensors"
    np.save(ip, ids)
    np.save(lp, lengths)
    r = invoke("trace", ck, ip, "--lengths", lp, "--padding", "pre", "-o", out, "--quiet")
    assert r.exit_code == 0, r.stderr
    tr = load_file(str(out))
    for b, n in enumerate(lengths):
        y, _, _ = torch_truth(model, ids[b:b + 1, T - n:])
        assert_close(tr["layer1/forward/h"][b, T - n:], y[0, :, :H])
        assert_close(tr["layer1/backward/h"][b, T - n:], y[0, :, H:])


def test_padding_pre_lengths_too_long(invoke, tmp_path, models):
    _, ck = models["plain"]
    ip, lp = tmp_path / "ids.npy", tmp_path / "len.npy"
    np.save(ip, ids_array((B, T), seed=45))
    np.save(lp, np.array([3, T + 1, 1]))
    assert_one_error_line(invoke("run", ck, ip, "--lengths", lp, "--padding", "pre"), lp, str(T + 1))


def test_ids_with_chunked_stream_and_all_layers(invoke, tmp_path, models, one_torch_thread):
    model, ck = models["plain"]
    ids = ids_array((B, T), seed=46)
    ip = tmp_path / "ids.npy"
    np.save(ip, ids)
    for i, extra in enumerate((["--chunk-size", "2"], ["--dtype", "float64"])):
        state, _ = export_state(invoke, ck, ip, tmp_path, *extra, name=f"s{i}.safetensors")
        assert_states(state, torch_truth(model, ids))


@pytest.mark.parametrize("pre", [False, True])
def test_run_all_layers_checks_ok(invoke, tmp_path, models, pre):
    _, ck = models["plain"]
    ip, lp = tmp_path / "ids.npy", tmp_path / "len.npy"
    np.save(ip, ids_array((B, T), seed=50))
    np.save(lp, np.array([3, T, 1]))
    extra = ["--lengths", lp, "--padding", "pre"] if pre else []
    r = invoke("run", ck, ip, "--all-layers", "--json", *extra)
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] is True and len(doc["checks"]) == LAYERS * 2
    assert all(c["ok"] for c in doc["checks"])


def test_ids_int8_negative_named(invoke, tmp_path, models):
    _, ck = models["plain"]
    ids = ids_array((B, T), seed=47, dtype=np.int8)
    ids[1, 4] = -2
    ip = tmp_path / "i8.npy"
    np.save(ip, ids)
    assert_one_error_line(invoke("run", ck, ip), ip, "-2", "[1, 4]")


def test_ids_huge_uint64(invoke, tmp_path, models):
    _, ck = models["plain"]
    ids = ids_array((B, T), seed=48, dtype=np.uint64)
    ids[2, 2] = np.uint64(2**63 + 5)
    ip = tmp_path / "u64.npy"
    np.save(ip, ids)
    assert_one_error_line(invoke("run", ck, ip), ip)


def test_compare_token_model_with_bare_lstm(invoke, tmp_path, models):
    """Side B (same LSTM, no embedding) reads the ids through A's embedding (a note says so): equal, exit 0.
    The other way round (A without an embedding) must at least be one clean error line, exit 2."""
    model, ck = models["plain"]
    bare = tmp_path / "bare.pt"
    torch.save({k: v for k, v in model.state_dict().items() if k.startswith("lstm.")}, bare)
    ip = tmp_path / "ids.npy"
    np.save(ip, ids_array((B, T), seed=49))
    r = invoke("compare", ck, bare, ip)
    assert r.exit_code == 0, (r.exit_code, r.stdout[-1000:], r.stderr)
    assert "Traceback" not in r.stderr and "embedding.weight" in r.stderr
    r = invoke("compare", bare, ck, ip)
    assert r.exit_code in (0, 2), (r.exit_code, r.stderr)
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    if r.exit_code == 2:
        assert r.stdout == "" and len(r.stderr.splitlines()) == 1 and r.stderr.startswith("Error: ")


def test_compare_padding_pre_torch_and_onnx(invoke, tmp_path, onnx_model):
    _, ck, path = onnx_model
    ip, lp = tmp_path / "ids.npy", tmp_path / "len.npy"
    np.save(ip, ids_array((B, T), seed=51))
    np.save(lp, np.array([3, T, 1]))
    r = invoke("compare", ck, path, ip, "--lengths", lp, "--padding", "pre")
    assert r.exit_code == 0, (r.exit_code, r.stdout[-1000:], r.stderr)
    assert "Traceback" not in r.stderr


def test_compare_padding_pre_note_reads_clearly(invoke, tmp_path, onnx_model):
    """The note about the skipped front padding must be one sentence, not 'skip the steps masked by each
    sequence's first T - len steps are skipped'."""
    _, ck, path = onnx_model
    ip, lp = tmp_path / "ids.npy", tmp_path / "len.npy"
    np.save(ip, ids_array((B, T), seed=52))
    np.save(lp, np.array([3, T, 1]))
    r = invoke("compare", ck, path, ip, "--lengths", lp, "--padding", "pre")
    assert r.exit_code == 0, r.stderr
    notes = [ln for ln in r.stderr.splitlines() if "padding at the front" in ln or "skip" in ln]
    assert notes, r.stderr
    for ln in notes:
        assert not ("masked by each sequence" in ln and "are skipped" in ln), ln


def test_integer_tensor_is_not_an_embedding(invoke, tmp_path, models):
    model, _ = models["plain"]
    sd = dict(model.state_dict())
    sd["token_emb_index"] = torch.arange(V * E).reshape(V, E)  # int64 2-D, width E, named like an embedding
    ck = tmp_path / "intemb.pt"
    torch.save(sd, ck)
    ip = tmp_path / "ids.npy"
    np.save(ip, ids_array((B, T), seed=53))
    r = invoke("run", ck, ip, "--quiet")
    assert r.exit_code == 0, r.stderr  # embedding.weight is still the only float candidate
    assert "embedding.weight" in r.stderr and "token_emb_index" not in r.stderr
    r = invoke("run", ck, ip, "--embedding", "token_emb_index")
    assert_one_error_line(r, None, "token_emb_index")


def test_onnx_embedding_option_missing_name(invoke, tmp_path, onnx_model):
    _, _, path = onnx_model
    ip = tmp_path / "ids.npy"
    np.save(ip, ids_array((B, T), seed=54))
    r = invoke("run", path, ip, "--embedding", "nope")
    assert_one_error_line(r, None, "nope", "embedding.weight")


def test_one_d_ids_with_time_major_refused(invoke, tmp_path, models):
    _, ck = models["plain"]
    ip = tmp_path / "one.npy"
    np.save(ip, ids_array((T,), seed=55))
    assert_one_error_line(invoke("run", ck, ip, "--time-major"), ip, "--time-major")


def test_onnx_float_features_of_input_width_run_with_note(invoke, tmp_path, onnx_model, one_torch_thread):
    """(B, T, E) float features to the ONNX token model skip the embedding (a note says so) and equal
    nn.LSTM on those features."""
    model, _, path = onnx_model
    x = np.random.default_rng(56).standard_normal((B, T, E)).astype(np.float32)
    ip = tmp_path / "x.npy"
    np.save(ip, x)
    state, r = export_state(invoke, path, ip, tmp_path, "--layout", "torch")
    assert "embedding.weight" in r.stderr and "Error" not in r.stderr, r.stderr
    with torch.no_grad():
        y, (h, c) = model.lstm(torch.from_numpy(x))
    assert_states(state, tuple(t.numpy().astype(np.float64) for t in (y, h, c)), tol=ONNX_TOL)


def test_onnx_ids_with_end_lengths(invoke, tmp_path, onnx_model, one_torch_thread):
    model, _, path = onnx_model
    ids = ids_array((B, T), seed=57)
    lengths = np.array([2, T, 4])
    ip, lp = tmp_path / "ids.npy", tmp_path / "len.npy"
    np.save(ip, ids)
    np.save(lp, lengths)
    state, _ = export_state(invoke, path, ip, tmp_path, "--lengths", lp, "--layout", "torch")
    assert_states(state, torch_truth(model, ids, lengths), tol=ONNX_TOL)


def test_trace_time_major_ids_and_compare(invoke, tmp_path, models, onnx_model, one_torch_thread):
    model, ck = models["plain"]
    ids = ids_array((B, T), seed=58)
    ip, out = tmp_path / "tm.npy", tmp_path / "trace.safetensors"
    np.save(ip, np.ascontiguousarray(ids.T))
    r = invoke("trace", ck, ip, "--time-major", "-o", out, "--quiet")
    assert r.exit_code == 0, r.stderr
    tr = load_file(str(out))
    y, _, _ = torch_truth(model, ids)
    assert_close(tr["layer1/forward/h"], y[:, :, :H])  # (B, T, W) whatever the input's layout
    assert_close(tr["layer1/backward/h"], y[:, :, H:])
    _, ck2, path = onnx_model
    r = invoke("compare", ck2, path, ip, "--time-major")
    assert r.exit_code == 0, (r.exit_code, r.stderr)


def test_batch_index_display_with_ids(invoke, tmp_path, models):
    _, ck = models["plain"]
    ip = tmp_path / "ids.npy"
    np.save(ip, ids_array((B, T), seed=59))
    r = invoke("run", ck, ip, "--batch-index", "1")
    assert r.exit_code == 0, r.stderr
    r = invoke("run", ck, ip, "--batch-index", str(B))
    assert r.exit_code == 2 and "Traceback" not in r.stderr, (r.exit_code, r.stderr)


def test_padding_pre_with_initial_state(invoke, tmp_path, models, one_torch_thread):
    """A seeded run with front padding: sequence b starts its last L[b] steps from (h0[:, b], c0[:, b])."""
    model, ck = models["plain"]
    ids = ids_array((B, T), seed=60)
    lengths = np.array([2, T, 4])
    rng = np.random.default_rng(61)
    h0 = (rng.standard_normal((LAYERS * 2, B, H)) * 0.5).astype(np.float32)
    c0 = (rng.standard_normal((LAYERS * 2, B, H)) * 0.5).astype(np.float32)
    ip, lp, sp = tmp_path / "ids.npy", tmp_path / "len.npy", tmp_path / "h0.npz"
    np.save(ip, ids)
    np.save(lp, lengths)
    np.savez(sp, h0=h0, c0=c0)
    state, _ = export_state(invoke, ck, ip, tmp_path, "--lengths", lp, "--padding", "pre", "--initial-state", sp)
    for b, n in enumerate(lengths):
        with torch.no_grad():
            x = model.embedding(torch.from_numpy(ids[b:b + 1, T - n:]))
            y, (h, c) = model.lstm(x, (torch.from_numpy(h0[:, b:b + 1]), torch.from_numpy(c0[:, b:b + 1])))
        assert_close(state["h_n"][:, b], h.numpy()[:, 0].astype(np.float64))
        assert_close(state["c_n"][:, b], c.numpy()[:, 0].astype(np.float64))
        assert_close(state["output"][b, T - n:], y.numpy()[0].astype(np.float64))
