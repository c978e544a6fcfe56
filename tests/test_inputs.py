"""Input sequences and lengths, through ``lstmscope run`` on a small checkpoint saved here.

The truth is the ``torch.nn.LSTM`` this module builds and runs directly (packed with
``enforce_sorted=False`` when lengths are given). lstmscope's JSON statistics of each h_n slice
must match those computed here from torch's own h_n.
"""

from __future__ import annotations

import gc
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from helpers import assert_one_error_line

F = 3  # the checkpoint's input_size
H = 4
LAYERS = 2
B, T = 3, 6


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(nn.LSTM, path of its saved state_dict): 2 layers, bidirectional, input_size 3, float32."""
    torch.manual_seed(0)
    lstm = nn.LSTM(input_size=F, hidden_size=H, num_layers=LAYERS, bidirectional=True, batch_first=True).eval()
    path = tmp_path_factory.mktemp("ckpt") / "lstm.pt"
    torch.save(lstm.state_dict(), path)
    return lstm, path


def rand(*shape, dtype=np.float32, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def torch_h_n(lstm: nn.LSTM, x_btf: np.ndarray, lengths=None) -> np.ndarray:
    """h_n (L*D, B, H) from torch run directly on batch-first float32 ``x_btf``."""
    x = torch.from_numpy(np.ascontiguousarray(x_btf, dtype=np.float32))
    with torch.no_grad():
        if lengths is None:
            _, (h, _) = lstm(x)
        else:
            packed = pack_padded_sequence(x, torch.as_tensor(np.asarray(lengths, dtype=np.int64)),
                                          batch_first=True, enforce_sorted=False)
            _, (h, _) = lstm(packed)
    return h.numpy().astype(np.float64)


def run_json(invoke, *args) -> dict:
    result = invoke("run", *args, "--json")
    assert result.exit_code == 0, (result.exit_code, result.stderr)
    assert result.stderr == ""
    return json.loads(result.stdout)


def assert_matches_torch(doc: dict, lstm: nn.LSTM, x_btf: np.ndarray, lengths=None):
    """Every h_n slice's statistics equal torch's, and the checks point where they must."""
    h = torch_h_n(lstm, x_btf, lengths)
    batch = x_btf.shape[0]
    assert doc["shapes"]["h_n"] == [LAYERS * 2, batch, H]
    assert len(doc["states"]) == LAYERS * 2
    for row in doc["states"]:
        idx = row["layer"] * 2 + (0 if row["direction"] == "forward" else 1)
        assert row["index"] == idx
        want = h[idx]
        got = row["h_n"]
        assert got["shape"] == [batch, H]
        assert got["mean"] == pytest.approx(want.mean(), abs=1e-5)
        assert got["min"] == pytest.approx(want.min(), abs=1e-5)
        assert got["max"] == pytest.approx(want.max(), abs=1e-5)
        assert got["norm"] == pytest.approx(np.linalg.norm(want), abs=1e-5)
    last = [x_btf.shape[1] - 1] * batch if lengths is None else [int(v) - 1 for v in lengths]
    assert doc["checks"], "the last layer is always checked"
    for check in doc["checks"]:
        want_t = last if check["direction"] == "forward" else [0] * batch
        assert check["output_time_index"] == want_t
        assert check["ok"] is True
    assert doc["ok"] is True


# --- accepted inputs -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_npy_batch_first(invoke, tmp_path, model, dtype):
    lstm, ck = model
    x = rand(B, T, F, dtype=dtype)
    path = tmp_path / "x.npy"
    np.save(path, x)
    doc = run_json(invoke, ck, path)
    inp = doc["input"]
    assert (inp["batch"], inp["time"], inp["features"]) == (B, T, F)
    assert inp["layout"] == "batch_first"
    assert inp["key"] is None and inp["lengths"] is None
    assert doc["shapes"]["output"] == [B, T, 2 * H]
    assert_matches_torch(doc, lstm, x.astype(np.float32))


def test_fortran_ordered_array(invoke, tmp_path, model):
    lstm, ck = model
    x = np.asfortranarray(rand(B, T, F))
    path = tmp_path / "x.npy"
    np.save(path, x)
    assert_matches_torch(run_json(invoke, ck, path), lstm, x)


@pytest.mark.parametrize("name", ["x", "features", "anything"])
def test_npz_with_one_array(invoke, tmp_path, model, name):
    lstm, ck = model
    x = rand(B, T, F, seed=2)
    path = tmp_path / "in.npz"
    np.savez(path, **{name: x})
    doc = run_json(invoke, ck, path)
    assert doc["input"]["key"] == name
    assert_matches_torch(doc, lstm, x)


@pytest.mark.parametrize("lengths_dtype", [np.int64, np.int32, np.uint8, np.float64])
def test_npz_with_x_and_lengths(invoke, tmp_path, model, lengths_dtype):
    lstm, ck = model
    x = rand(B, T, F, seed=3)
    lengths = np.array([4, T, 1], dtype=lengths_dtype)  # unsorted, includes T and 1
    path = tmp_path / "in.npz"
    np.savez(path, x=x, lengths=lengths)
    doc = run_json(invoke, ck, path)
    assert doc["input"]["key"] == "x"
    assert doc["input"]["lengths"] == [4, T, 1]
    assert_matches_torch(doc, lstm, x, [4, T, 1])


def test_lengths_file(invoke, tmp_path, model):
    lstm, ck = model
    x = rand(B, T, F, seed=4)
    xp, lp = tmp_path / "x.npy", tmp_path / "lens.npy"
    np.save(xp, x)
    np.save(lp, np.array([2, 5, 3]))
    doc = run_json(invoke, ck, xp, "--lengths", lp)
    assert doc["input"]["lengths"] == [2, 5, 3]
    assert_matches_torch(doc, lstm, x, [2, 5, 3])


def test_lengths_all_shorter_than_t_with_all_layers(invoke, tmp_path, model):
    lstm, ck = model
    x = rand(B, T, F, seed=5)
    xp, lp = tmp_path / "x.npy", tmp_path / "lens.npy"
    np.save(xp, x)
    np.save(lp, np.array([3, 1, 2]))
    doc = run_json(invoke, ck, xp, "--lengths", lp, "--all-layers")
    assert_matches_torch(doc, lstm, x, [3, 1, 2])
    assert {(c["layer"], c["direction"]) for c in doc["checks"]} == {
        (layer, d) for layer in range(LAYERS) for d in ("forward", "backward")
    }


def test_whole_number_float_lengths_are_accepted(invoke, tmp_path, model):
    lstm, ck = model
    x = rand(B, T, F, seed=6)
    xp, lp = tmp_path / "x.npy", tmp_path / "lens.npy"
    np.save(xp, x)
    np.save(lp, np.array([3.0, 6.0, 2.0]))
    doc = run_json(invoke, ck, xp, "--lengths", lp)
    assert doc["input"]["lengths"] == [3, 6, 2]
    assert all(isinstance(v, int) for v in doc["input"]["lengths"])
    assert_matches_torch(doc, lstm, x, [3, 6, 2])


def test_lengths_npz_file(invoke, tmp_path, model):
    lstm, ck = model
    x = rand(B, T, F, seed=7)
    xp, lp = tmp_path / "x.npy", tmp_path / "lens.npz"
    np.save(xp, x)
    np.savez(lp, lengths=np.array([1, 2, 3]))
    assert_matches_torch(run_json(invoke, ck, xp, "--lengths", lp), lstm, x, [1, 2, 3])


def test_two_d_is_one_sequence(invoke, tmp_path, model):
    lstm, ck = model
    x = rand(T, F, seed=8)
    path = tmp_path / "one.npy"
    np.save(path, x)
    doc = run_json(invoke, ck, path)
    inp = doc["input"]
    assert (inp["batch"], inp["time"], inp["features"], inp["layout"]) == (1, T, F, "single")
    assert_matches_torch(doc, lstm, x[None])


def test_two_d_with_length(invoke, tmp_path, model):
    lstm, ck = model
    x = rand(T, F, seed=9)
    xp, lp = tmp_path / "one.npy", tmp_path / "lens.npy"
    np.save(xp, x)
    np.save(lp, np.array([4]))
    assert_matches_torch(run_json(invoke, ck, xp, "--lengths", lp), lstm, x[None], [4])


def test_time_major(invoke, tmp_path, model):
    lstm, ck = model
    x_tbf = rand(T, B, F, seed=10)
    path = tmp_path / "tm.npy"
    np.save(path, x_tbf)
    doc = run_json(invoke, ck, path, "--time-major")
    inp = doc["input"]
    assert (inp["batch"], inp["time"], inp["layout"]) == (B, T, "time_major")
    assert doc["shapes"]["output"] == [T, B, 2 * H]
    assert_matches_torch(doc, lstm, x_tbf.transpose(1, 0, 2))


def test_time_major_with_lengths(invoke, tmp_path, model):
    lstm, ck = model
    x_tbf = rand(T, B, F, seed=11)
    path = tmp_path / "tm.npz"
    np.savez(path, x=x_tbf, lengths=np.array([5, 2, 6]))
    doc = run_json(invoke, ck, path, "--time-major")
    assert_matches_torch(doc, lstm, x_tbf.transpose(1, 0, 2), [5, 2, 6])


def test_time_major_flag_is_not_a_no_op(invoke, tmp_path, model):
    """The same (T, B, F) file read without --time-major is a different batch (when B != T)."""
    _, ck = model
    path = tmp_path / "tm.npy"
    np.save(path, rand(T, B, F, seed=12))
    doc = run_json(invoke, ck, path)
    assert (doc["input"]["batch"], doc["input"]["time"]) == (T, B)


def test_key_picks_array_from_several(invoke, tmp_path, model):
    lstm, ck = model
    a, b = rand(B, T, F, seed=13), rand(2, 5, F, seed=14)
    path = tmp_path / "several.npz"
    np.savez(path, enc_in=a, dec_in=b)
    for name, arr in (("dec_in", b), ("enc_in", a)):
        doc = run_json(invoke, ck, path, "--key", name)
        assert doc["input"]["key"] == name
        assert_matches_torch(doc, lstm, arr)


def test_npz_conventional_name_wins(invoke, tmp_path, model):
    lstm, ck = model
    x = rand(B, T, F, seed=15)
    path = tmp_path / "xy.npz"
    np.savez(path, x=x, y=rand(B, T, F, seed=16))
    doc = run_json(invoke, ck, path)
    assert doc["input"]["key"] == "x"
    assert_matches_torch(doc, lstm, x)


def test_npz_only_float_array_is_the_input(invoke, tmp_path, model):
    lstm, ck = model
    x = rand(B, T, F, seed=17)
    path = tmp_path / "xl.npz"
    np.savez(path, seqs=x, labels=np.array([0, 1, 1]))
    doc = run_json(invoke, ck, path)
    assert doc["input"]["key"] == "seqs"
    assert_matches_torch(doc, lstm, x)


def test_npz_ambiguous_arrays_need_key(invoke, tmp_path, model):
    _, ck = model
    path = tmp_path / "ambiguous.npz"
    np.savez(path, first=rand(B, T, F), second=rand(B, T, F, seed=2))
    assert_one_error_line(invoke("run", ck, path), path, "first", "second", "--key")


def test_npz_unknown_key_lists_arrays(invoke, tmp_path, model):
    _, ck = model
    path = tmp_path / "two.npz"
    np.savez(path, first=rand(B, T, F), second=rand(B, T, F, seed=2))
    assert_one_error_line(invoke("run", ck, path, "--key", "third"), path, "third", "first", "second")


def test_key_on_npy_is_refused(invoke, tmp_path, model):
    _, ck = model
    path = tmp_path / "x.npy"
    np.save(path, rand(B, T, F))
    assert_one_error_line(invoke("run", ck, path, "--key", "x"), path, "--key")


# --- rejected inputs -------------------------------------------------------------------------------

def _save_npy(arr, allow_pickle=False):
    def write(path):
        np.save(path, arr, allow_pickle=allow_pickle)
    return write


def _write_bytes(fn):
    def write(path):
        path.write_bytes(fn())
    return write


def _npy_bytes(arr) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


BAD_INPUTS = {
    # name: (file suffix, writer, fragments the message must hold besides the file name)
    "one_d": (".npy", _save_npy(rand(F)), ["1-D"]),
    "four_d": (".npy", _save_npy(rand(1, B, T, F)), ["4-D"]),
    "zero_time": (".npy", _save_npy(rand(B, 0, F)), ["time"]),
    "zero_time_2d": (".npy", _save_npy(rand(0, F)), ["time"]),
    "zero_batch": (".npy", _save_npy(rand(0, T, F)), ["batch"]),
    "zero_features": (".npy", _save_npy(rand(B, T, 0)), []),
    "object": (".npy", _save_npy(np.array([[[1.0] * F] * T] * B, dtype=object), allow_pickle=True), []),
    "complex": (".npy", _save_npy(rand(B, T, F) + 1j * rand(B, T, F)), ["complex"]),
    "strings": (".npy", _save_npy(np.full((B, T, F), "ab")), []),
    "bytes": (".npy", _save_npy(np.full((B, T, F), b"ab")), []),
    "bool": (".npy", _save_npy(np.ones((B, T, F), dtype=bool)), ["bool", "token ids"]),
    "int64": (".npy", _save_npy(np.ones((B, T, F), dtype=np.int64)), ["3-D", "token ids are", "(B, T)"]),
    "int_token_ids": (".npy", _save_npy(np.arange(B * T).reshape(B, T)), ["embedding"]),
    "uint8": (".npy", _save_npy(np.ones((B, T, F), dtype=np.uint8)), ["uint8", "token ids are"]),
    "empty_file": (".npy", _write_bytes(lambda: b""), []),
    "truncated_header": (".npy", _write_bytes(lambda: _npy_bytes(rand(B, T, F))[:40]), []),
    "truncated_data": (".npy", _write_bytes(lambda: (lambda b: b[: len(b) - 100])(_npy_bytes(rand(B, 50, F)))), []),
    "text": (".npy", _write_bytes(lambda: b"0.1,0.2,0.3\n0.4,0.5,0.6\n"), []),
    "random_npz": (".npz", _write_bytes(lambda: np.random.default_rng(0).integers(0, 256, 999, dtype=np.uint8).tobytes()), []),
    "npz_empty": (".npz", lambda p: np.savez(p), []),
    "npz_only_lengths": (".npz", lambda p: np.savez(p, lengths=np.array([1, 2, 3])), ["lengths"]),
    "npz_int_only": (".npz", lambda p: np.savez(p, tokens=np.ones((B, T), dtype=np.int64)), ["embedding"]),
}


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_rejected_input(invoke, tmp_path, model, kind):
    _, ck = model
    suffix, write, fragments = BAD_INPUTS[kind]
    path = tmp_path / f"bad_{kind}{suffix}"
    write(path)
    assert_one_error_line(invoke("run", ck, path), path, *fragments)


def _write_bad_npz(kind: str, path):
    if kind == "object":
        np.savez(path, x=np.array([[[1.0] * F] * T] * B, dtype=object))
    else:  # a valid .npz cut in half
        full = path.with_name("full.npz")
        np.savez(full, x=rand(B, 50, F))
        data = full.read_bytes()
        path.write_bytes(data[: len(data) // 2])


def _run_collecting_unclosed_files(invoke, *args):
    """Run, then collect garbage; returns (result, ResourceWarnings about files left open)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = invoke(*args)
        saved = (result.exit_code, result.stdout, result.stderr)
        del result
        gc.collect()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    return saved, unclosed


@pytest.mark.parametrize("kind", ["object", "truncated"])
def test_rejected_npz(invoke, tmp_path, model, kind):
    _, ck = model
    path = tmp_path / f"bad_{kind}.npz"
    _write_bad_npz(kind, path)
    (code, out, err), _ = _run_collecting_unclosed_files(invoke, "run", ck, path)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("Error: ") and path.name in err
    assert "Traceback" not in err


@pytest.mark.parametrize("kind", [
    "object",
    "truncated",
])
def test_rejected_npz_is_closed(invoke, tmp_path, model, kind):
    _, ck = model
    path = tmp_path / f"bad_{kind}.npz"
    _write_bad_npz(kind, path)
    (code, _, _), unclosed = _run_collecting_unclosed_files(invoke, "run", ck, path)
    assert code == 2
    assert unclosed == []


@pytest.mark.parametrize("width", [1, 2, 4, 7])
def test_wrong_feature_width_names_both_widths(invoke, tmp_path, model, width):
    _, ck = model
    path = tmp_path / "wide.npy"
    np.save(path, rand(B, T, width))
    line = assert_one_error_line(invoke("run", ck, path), path)
    assert f"{width} features" in line
    assert f"expects {F}" in line


def test_wrong_feature_width_two_d_and_time_major(invoke, tmp_path, model):
    _, ck = model
    p2 = tmp_path / "w2.npy"
    np.save(p2, rand(T, 5))
    assert "5 features" in assert_one_error_line(invoke("run", ck, p2), p2, f"expects {F}")
    p3 = tmp_path / "w3.npy"
    np.save(p3, rand(T, B, 5))
    assert "5 features" in assert_one_error_line(invoke("run", ck, p3, "--time-major"), p3, f"expects {F}")


def test_time_major_hint_only_when_it_helps(invoke, tmp_path, model):
    _, ck = model
    path = tmp_path / "bft.npy"
    np.save(path, rand(4, F, 2))  # (B, F, T)-like: axis 1 happens to equal input_size
    first = invoke("run", ck, path)
    assert first.exit_code == 2
    if "--time-major" in first.stderr:
        again = invoke("run", ck, path, "--time-major")
        assert "features per step" not in again.stderr, again.stderr


def test_big_endian_float_input(invoke, tmp_path, model):
    lstm, ck = model
    x = rand(B, T, F, seed=18)
    path = tmp_path / "be.npy"
    np.save(path, x.astype(">f4"))
    assert_matches_torch(run_json(invoke, ck, path), lstm, x)


def test_text_file_is_not_called_a_pickle(invoke, tmp_path, model):
    _, ck = model
    path = tmp_path / "table.npy"
    path.write_text("0.1,0.2,0.3\n0.4,0.5,0.6\n")
    line = assert_one_error_line(invoke("run", ck, path), path)
    assert "pickle" not in line and "Python objects" not in line


def test_missing_and_directory_input(invoke, tmp_path, model):
    _, ck = model
    d = tmp_path / "inputs.npy"
    d.mkdir()
    for path in (d, tmp_path / "missing.npy", tmp_path / "missing.npz"):
        assert_one_error_line(invoke("run", ck, path), path)


def test_missing_and_directory_lengths(invoke, tmp_path, model):
    _, ck = model
    xp = tmp_path / "x.npy"
    np.save(xp, rand(B, T, F))
    d = tmp_path / "lens_dir.npy"
    d.mkdir()
    for lp in (d, tmp_path / "missing_lens.npy"):
        assert_one_error_line(invoke("run", ck, xp, "--lengths", lp), lp)


BAD_LENGTHS = {
    "longer_than_t": (np.array([2, T + 1, 3]), [str(T + 1), str(T)]),
    "zero": (np.array([2, 0, 3]), ["0"]),
    "negative": (np.array([2, 3, -1]), ["-1"]),
    "too_few": (np.array([2, 3]), ["2 lengths", f"{B} sequences"]),
    "too_many": (np.array([2, 3, 4, 5]), ["4 lengths", f"{B} sequences"]),
    "non_whole": (np.array([2.5, 3.0, 1.0]), ["2.5"]),
    "nan": (np.array([np.nan, 3.0, 1.0]), ["nan"]),
    "two_d": (np.array([[2], [3], [4]]), ["2-D"]),
    "zero_d": (np.array(3), ["0-D"]),
    "bool": (np.array([True, True, False]), ["bool"]),
    "strings": (np.array(["2", "3", "4"]), []),
    "empty": (np.array([], dtype=np.int64), []),
}


@pytest.mark.parametrize("kind", list(BAD_LENGTHS))
def test_rejected_lengths_file(invoke, tmp_path, model, kind):
    _, ck = model
    lengths, fragments = BAD_LENGTHS[kind]
    xp, lp = tmp_path / "x.npy", tmp_path / f"lens_{kind}.npy"
    np.save(xp, rand(B, T, F))
    np.save(lp, lengths)
    assert_one_error_line(invoke("run", ck, xp, "--lengths", lp), lp, *fragments)


@pytest.mark.parametrize("kind", ["longer_than_t", "zero", "negative", "too_few", "non_whole", "two_d"])
def test_rejected_lengths_inside_npz(invoke, tmp_path, model, kind):
    _, ck = model
    lengths, fragments = BAD_LENGTHS[kind]
    path = tmp_path / f"in_{kind}.npz"
    np.savez(path, x=rand(B, T, F), lengths=lengths)
    assert_one_error_line(invoke("run", ck, path), path, "lengths", *fragments)


def test_rejected_lengths_time_major(invoke, tmp_path, model):
    """With --time-major, T is axis 0: a length of T+1 is still too long, B is axis 1."""
    _, ck = model
    xp, lp = tmp_path / "tm.npy", tmp_path / "lens.npy"
    np.save(xp, rand(T, B, F))
    np.save(lp, np.array([1, T + 1, 2]))
    assert_one_error_line(invoke("run", ck, xp, "--time-major", "--lengths", lp), lp, str(T + 1))
    np.save(lp, np.array([1] * T))  # one per time step instead of one per sequence
    assert_one_error_line(invoke("run", ck, xp, "--time-major", "--lengths", lp), lp, f"{B} sequences")


def test_lengths_npz_with_several_arrays_needs_lengths_name(invoke, tmp_path, model):
    _, ck = model
    xp, lp = tmp_path / "x.npy", tmp_path / "lens.npz"
    np.save(xp, rand(B, T, F))
    np.savez(lp, a=np.array([1, 2, 3]), b=np.array([1, 2, 3]))
    assert_one_error_line(invoke("run", ck, xp, "--lengths", lp), lp, "lengths")
