"""StepwiseLSTM's two recurrent products, each against independent truth: the prepacked oneDNN one (private
torch ops, used for float32 on the CPU when present) and the plain addmm_/baddbmm_ loop (LSTMSCOPE_PREPACK=0,
and the fallback when the private ops fail). Outputs and final states against torch.nn.LSTM run directly;
the captured gates, c and h against the float64 numpy reference (tests/reference_cells.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lstmscope.engine import stepwise
from lstmscope.engine.stepwise import StepBlock, StepwiseLSTM
from reference_cells import lstm_reference_trace

TOL = 1e-5  # float32
I, B, T = 6, 5, 9
LENGTHS = [4, 9, 1, 7, 9]  # unsorted, with a length-1 and two full-length sequences

CASES = {  # (num_layers, bidirectional, proj_size, hidden_size)
    "plain": (1, False, 0, 16),
    "bidirectional": (1, True, 0, 16),
    "proj_size": (1, False, 5, 16),
    "two_layers": (2, False, 0, 16),
    "two_layers_bidirectional_proj": (2, True, 5, 16),
    "wider": (2, True, 0, 48),  # a 192-wide GEMM: oneDNN's blocked kernels, not only its edge cases
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ops_present() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return (torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_linear_weight")
            and hasattr(ops, "_linear_pointwise"))


@pytest.fixture(autouse=True)
def fresh_verdict(monkeypatch):
    """Each test starts with the prepacked product not given up (a failure is remembered per process)."""
    monkeypatch.setattr(stepwise, "_prepack_failure", None)


@pytest.fixture(params=["prepacked", "plain"])
def path(request, monkeypatch) -> str:
    """The recurrent product the test expects to run: prepacked (skipped without the private ops; the size
    rule lifted, so these tiny models take it too) or plain (turned off through LSTMSCOPE_PREPACK=0)."""
    monkeypatch.setattr(stepwise, "PREPACK_MIN_WEIGHT", 0)
    monkeypatch.setattr(stepwise, "PREPACK_MIN_MACS", 0)
    if request.param == "plain":
        monkeypatch.setenv(stepwise.PREPACK_ENV, "0")
    else:
        monkeypatch.delenv(stepwise.PREPACK_ENV, raising=False)
        if not ops_present():
            pytest.skip("this torch has no oneDNN linear ops (torch.ops.mkldnn._reorder_linear_weight, "
                        "_linear_pointwise): only the plain recurrent product can run")
    return request.param


def make(case: str, seed: int = 0) -> tuple[torch.nn.LSTM, StepwiseLSTM]:
    """nn.LSTM (float32, batch-first) and a StepwiseLSTM holding its parameters."""
    num_layers, bidirectional, proj_size, hidden = CASES[case]
    torch.manual_seed(seed)
    ref = torch.nn.LSTM(I, hidden, num_layers=num_layers, bidirectional=bidirectional, proj_size=proj_size,
                        batch_first=True).eval()
    m = StepwiseLSTM(I, hidden, num_layers=num_layers, bidirectional=bidirectional, proj_size=proj_size,
                     batch_first=True)
    m.load_state_dict(ref.state_dict())
    return ref, m


def inputs(ref: torch.nn.LSTM, seed: int = 1):
    """x (batch, time, features) and (h0, c0), (L * D, batch, P) and (L * D, batch, hidden)."""
    g = torch.Generator().manual_seed(seed)
    n = ref.num_layers * (2 if ref.bidirectional else 1)
    x = torch.randn(B, T, I, generator=g)
    h0 = torch.randn(n, B, ref.proj_size or ref.hidden_size, generator=g)
    c0 = torch.randn(n, B, ref.hidden_size, generator=g)
    return x, (h0, c0)


def close(got: torch.Tensor, want, what: str) -> None:
    want = want.double().numpy() if isinstance(want, torch.Tensor) else np.asarray(want, dtype=np.float64)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=TOL, atol=TOL, err_msg=what)


def run_ref(ref, inp, hx):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not supported with oneDNN.*")  # projections: torch falls back
        return ref(inp, hx)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("packed", [False, True], ids=["full_length", "packed_lengths"])
def test_equals_nn_lstm(path, case, packed):
    ref, m = make(case)
    x, hx = inputs(ref)
    strided = tuple(t.transpose(0, 1).contiguous().transpose(0, 1) for t in hx)  # the same values, other strides
    for state in (None, hx, strided):
        inp = x
        if packed:
            inp = pack_padded_sequence(x, torch.tensor(LENGTHS), batch_first=True, enforce_sorted=False)
        want_out, (want_h, want_c) = run_ref(ref, inp, state)
        got_out, (got_h, got_c) = m(inp, state)
        assert stepwise.last_recurrent_path == path
        if packed:
            got_out, want_out = (pad_packed_sequence(o, batch_first=True)[0] for o in (got_out, want_out))
        close(got_out, want_out, f"{case} output")
        close(got_h, want_h, f"{case} h_n")
        close(got_c, want_c, f"{case} c_n")


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("packed", [False, True], ids=["full_length", "packed_lengths"])
def test_capture_equals_reference(path, case, packed, monkeypatch):
    monkeypatch.setattr(stepwise, "MAX_BLOCK_STEPS", 4)  # blocks of 4, 4 and 1 steps
    ref, m = make(case)
    x, (h0, c0) = inputs(ref)
    lengths = LENGTHS if packed else None
    inp = pack_padded_sequence(x, torch.tensor(LENGTHS), batch_first=True, enforce_sorted=False) if packed else x
    got: dict[tuple[int, int, str], np.ndarray] = {}

    def capture(b: StepBlock) -> None:
        for q in "hcifgo":
            arr = got.setdefault((b.layer, b.direction, q), np.full((B, T, getattr(b, q).shape[2]), np.nan))
            arr[:, b.start:b.start + b.h.shape[0]] = getattr(b, q).transpose(0, 1).double().numpy()

    out, _ = m(inp, (h0, c0), capture=capture)
    assert stepwise.last_recurrent_path == path
    want = lstm_reference_trace(ref.state_dict(), x.numpy(), num_layers=ref.num_layers,
                                bidirectional=ref.bidirectional, proj_size=ref.proj_size, lengths=lengths,
                                h0=h0.numpy(), c0=c0.numpy())
    assert set(got) == set(want)
    for key, w in want.items():
        valid = ~np.isnan(w)  # steps past a sequence's length hold junk in a capture
        close(torch.from_numpy(got[key][valid]), w[valid], f"{case} {key}")


@pytest.mark.parametrize("hidden,batch,expected", [(256, 2, "prepacked"), (256, 1, "plain"), (64, 32, "plain")])
def test_size_rule_picks_the_path(monkeypatch, hidden, batch, expected):
    """By default only a big enough recurrent GEMM takes the prepacked product (oneDNN's call costs more)."""
    monkeypatch.delenv(stepwise.PREPACK_ENV, raising=False)
    if expected == "prepacked" and not ops_present():
        pytest.skip("this torch has no oneDNN linear ops")
    torch.manual_seed(0)
    ref = torch.nn.LSTM(4, hidden, num_layers=2, bidirectional=True, batch_first=True).eval()
    m = StepwiseLSTM(4, hidden, num_layers=2, bidirectional=True, batch_first=True)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(batch, 5, 4, generator=torch.Generator().manual_seed(1))  # (batch, time, features)
    out, (h_n, c_n) = m(x)
    assert stepwise.last_recurrent_path == expected
    want_out, (want_h, want_c) = run_ref(ref, x, None)
    close(out, want_out, "output")
    close(h_n, want_h, "h_n")
    close(c_n, want_c, "c_n")


def test_float64_runs_plain(monkeypatch):
    monkeypatch.delenv(stepwise.PREPACK_ENV, raising=False)
    monkeypatch.setattr(stepwise, "PREPACK_MIN_WEIGHT", 0)
    monkeypatch.setattr(stepwise, "PREPACK_MIN_MACS", 0)
    ref, m = make("bidirectional")
    ref, m = ref.double(), m.double()
    x, _ = inputs(ref)
    out, _ = m(x.double())
    assert stepwise.last_recurrent_path == "plain"
    np.testing.assert_allclose(out.numpy(), run_ref(ref, x.double(), None)[0].numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not ops_present(), reason="this torch has no oneDNN linear ops: nothing to fall back from")
@pytest.mark.parametrize("how", ["disagrees", "raises"])
def test_failed_self_check_falls_back_and_is_remembered(monkeypatch, how):
    monkeypatch.delenv(stepwise.PREPACK_ENV, raising=False)
    monkeypatch.setattr(stepwise, "PREPACK_MIN_WEIGHT", 0)
    monkeypatch.setattr(stepwise, "PREPACK_MIN_MACS", 0)
    tolerance, reorder = stepwise.PREPACK_TOLERANCE, torch.ops.mkldnn._reorder_linear_weight
    if how == "disagrees":
        monkeypatch.setattr(stepwise, "PREPACK_TOLERANCE", -1.0)  # no error is small enough
    else:
        def broken(*args, **kwargs):
            raise RuntimeError("oneDNN is not here today")
        monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", broken)
    ref, m = make("two_layers_bidirectional_proj")
    x, hx = inputs(ref)
    out, (h_n, c_n) = m(x, hx)
    assert stepwise.last_recurrent_path == "plain"
    assert stepwise._prepack_failure is not None
    want_out, (want_h, want_c) = run_ref(ref, x, hx)
    close(out, want_out, "output")
    close(h_n, want_h, "h_n")
    close(c_n, want_c, "c_n")
    # the op works again, but the failure is remembered for the process
    monkeypatch.setattr(stepwise, "PREPACK_TOLERANCE", tolerance)
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", reorder)
    m(x, hx)
    assert stepwise.last_recurrent_path == "plain"
