"""Read and validate input sequences (.npy / .npz) and lengths. numpy only."""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstmscope.arrays import DiskArray, npz_member, open_npy
from lstmscope.errors import InputError, clean_message
from lstmscope.fileio import check_source, file_sha256, shown_name, spool

LAYOUT_BATCH_FIRST = "batch_first"  # (B, T, F)
LAYOUT_TIME_MAJOR = "time_major"  # (T, B, F)
LAYOUT_SINGLE = "single"  # (T, F): one sequence, run as a batch of 1

_DATA_KEYS = ("x", "inputs", "input", "sequences", "sequence", "data", "features", "ids", "input_ids", "token_ids", "tokens")
_LENGTH_KEYS = ("lengths", "lens", "seq_lengths")
_FLOAT_KINDS = {np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)}


@dataclass
class Sequences:
    """A validated batch of input sequences. The array stays on disk until it is read: all at once
    (``data``) or a few time steps at a time (``read_steps``, for streamed runs).

    Token ids (an integer file: (B, T), (T, B) with ``--time-major``, or (T,) one sequence) are held as ids
    until an embedding is attached (``attach_embedding``); from then on ``data`` and ``read_steps`` give the
    embedded features, and ``ids`` the ids."""

    path: Path
    key: str | None  # array name inside an .npz, None for .npy
    source: "DiskArray | np.ndarray"  # the array as the file stores it: (B, T, F), (T, B, F) or (T, F); ids: no F
    layout: str  # how the file stored it: "batch_first", "time_major" or "single"
    lengths: np.ndarray | None  # (B,) int64, each in 1..T, or None when every sequence is T long
    lengths_source: str | None  # where the lengths came from ("x.npz[lengths]", "lens.npy")
    _sha256: str | None  # of the input file's bytes, once asked for (see sha256)
    _data: np.ndarray | None = None
    tokens: bool = False  # the file holds integer token ids
    embedding: np.ndarray | None = None  # (vocab, width) once attached (token inputs)
    embedding_ref: Any = None  # lstmscope.tokens.EmbeddingRef of the attached matrix
    _ids: np.ndarray | None = None
    notes: list = field(default_factory=list)  # one-line remarks for stderr (e.g. --lengths over the .npz's)

    @property
    def sha256(self) -> str:
        """The input file's sha256, computed when first asked for (snapshots and JSON record it; tables do not)."""
        if self._sha256 is None:
            self._sha256 = file_sha256(self.path)
        return self._sha256

    @property
    def shape(self) -> tuple[int, int, int]:
        """(batch, time, features) whatever the file's layout (token ids: features is the embedding's width, 0
        before one is attached)."""
        s = self.source.shape
        if self.tokens:
            f = 0 if self.embedding is None else int(self.embedding.shape[1])
            s = (*s, f)
        if self.layout == LAYOUT_SINGLE:
            return 1, s[0], s[1]
        if self.layout == LAYOUT_TIME_MAJOR:
            return s[1], s[0], s[2]
        return s[0], s[1], s[2]

    @property
    def batch(self) -> int:
        return self.shape[0]

    @property
    def time(self) -> int:
        return self.shape[1]

    @property
    def features(self) -> int:
        return self.shape[2]

    @property
    def ids(self) -> np.ndarray:
        """Token ids as (B, T) int64 (token inputs only), read once."""
        if not self.tokens:
            raise ValueError("not a token input")
        if self._ids is None:
            arr = self.source.read() if isinstance(self.source, DiskArray) else np.asarray(self.source)
            arr = arr[None] if self.layout == LAYOUT_SINGLE else arr.T if self.layout == LAYOUT_TIME_MAJOR else arr
            if arr.dtype == np.uint64 and arr.size and int(arr.max()) >= 2 ** 63:  # would wrap to negative in int64
                raise InputError(f"{self.display_name} holds a token id of 2**63 or more; no vocabulary is that large")
            self._ids = np.ascontiguousarray(arr, dtype=np.int64)
        return self._ids

    def attach_embedding(self, matrix: np.ndarray, ref) -> None:
        """Look token ids up in ``matrix`` (vocab, width) from now on; InputError for an id out of range."""
        from lstmscope.tokens import check_ids

        check_ids(self.ids, matrix.shape[0], self.display_name, time_major=self.layout == LAYOUT_TIME_MAJOR,
                  single=self.layout == LAYOUT_SINGLE)
        self.embedding, self.embedding_ref, self._data = matrix, ref, None

    def read_ids(self, start: int, stop: int) -> np.ndarray:
        return self.ids[:, start:stop]

    @property
    def data(self) -> np.ndarray:
        """The whole input as a (B, T, F) batch-first view (time-major files are transposed, not copied)."""
        if self._data is None:
            if self.tokens:
                self._data = self.read_steps(0, self.time)
                return self._data
            arr = self.source.read() if isinstance(self.source, DiskArray) else self.source
            self._data = arr[None] if self.layout == LAYOUT_SINGLE else (
                arr.transpose(1, 0, 2) if self.layout == LAYOUT_TIME_MAJOR else arr)
        return self._data

    def read_steps(self, start: int, stop: int) -> np.ndarray:
        """Time steps start..stop-1 of every sequence, (B, stop - start, F), read from disk by position."""
        if self.tokens:
            if self.embedding is None:
                raise ValueError("token ids need an embedding attached before they are read as features")
            if self._data is not None:
                return self._data[:, start:stop]
            from lstmscope.tokens import lookup

            return lookup(self.embedding, self.read_ids(start, stop))
        src = self.source
        if self._data is not None or not isinstance(src, DiskArray) or src.fortran_order:
            return self.data[:, start:stop]
        if self.layout == LAYOUT_SINGLE:
            return src.read_axis0(start, stop)[None]
        if self.layout == LAYOUT_TIME_MAJOR:
            return src.read_axis0(start, stop).transpose(1, 0, 2)
        return src.read_axis1(start, stop)

    def last_steps(self) -> np.ndarray:
        """(B,) index of each sequence's true last step."""
        if self.lengths is None:
            return np.full(self.batch, self.time - 1, dtype=np.int64)
        return self.lengths - 1

    @property
    def display_name(self) -> str:
        name = shown_name(self.path)
        return f"{name}[{self.key}]" if self.key else name


def _load_any(path: Path, what: str):
    """Open an .npy (a DiskArray) or .npz (name -> DiskArray or array) without reading its data and
    without pickles; every failure becomes an InputError naming the file. What the file is comes from
    lstmscope.sniff, as for every other file."""
    from lstmscope import sniff as sn

    check_source(path, f"{what} (.npy or .npz)", InputError)
    try:
        found = sn.sniff(path)
        if found.format == sn.NPY:
            return open_npy(path, str(path), InputError)
        if found.format == sn.NPZ:
            with zipfile.ZipFile(path) as z:
                return {i.filename[:-4]: npz_member(path, z, i, f"{path.name}[{i.filename[:-4]}]", InputError)
                        for i in z.infolist()}
        if found.format == sn.DAMAGED_ZIP:
            raise InputError(f"{path} is a damaged or truncated .npz (zip) archive")
        if found.format == sn.UNKNOWN_ZIP:
            with zipfile.ZipFile(path) as z:
                if not z.namelist():
                    raise InputError(f"{path} is an empty .npz archive; expected the input sequences in it")
            raise InputError(f"{path} is a zip archive but not an .npz; the input must be .npy or .npz sequences")
        if found.format in sn.CHECKPOINT_FORMATS or found.format in (sn.TORCHSCRIPT, sn.SNAPSHOT):
            raise InputError(f"{path} is {found.description}, not input sequences; the input must be .npy or .npz "
                             "sequences (a checkpoint goes in the CHECKPOINT argument)")
        raise InputError(f"{path} is not a .npy/.npz file ({found.description}, no NumPy header); save arrays with "
                         "np.save or np.savez")
    except InputError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError, NotImplementedError) as e:
        raise InputError(f"{path} is not a readable .npy/.npz file ({clean_message(e)})") from None


def _read_small(arr) -> np.ndarray:
    return arr.read() if isinstance(arr, DiskArray) else np.asarray(arr)


def load_sequences(
    path: str | os.PathLike,
    *,
    time_major: bool = False,
    key: str | None = None,
    lengths_path: str | os.PathLike | None = None,
    expected_features: int | None = None,
    module_name: str = "",
) -> Sequences:
    """Read and validate an input file. ``expected_features`` is the LSTM's input_size. A pipe or ``-`` (standard
    input) is read as a stream of bytes (lstmscope.fileio.spool)."""
    path = spool(Path(path), "input", InputError)
    obj = _load_any(path, "input")
    lengths = None
    lengths_source = None
    if isinstance(obj, dict):
        key = _pick_key(path, obj, key)
        arr = obj[key]
        for lk in _LENGTH_KEYS:
            if lk in obj and lk != key:
                lengths, lengths_source = _read_small(obj[lk]), f"{path.name}[{lk}]"
                break
    else:
        if key is not None:
            raise InputError(f"{path} is a .npy file holding one array; --key applies to .npz files only")
        arr = obj
    where = f"{path.name}[{key}]" if key else path.name
    if arr.dtype.kind in "iu":  # token ids: (B, T), (T, B) with --time-major, or (T,) one sequence
        tokens = True
        _check_ids_array(arr, where, time_major)
        if arr.ndim == 1:
            if time_major:
                raise InputError(f"{where} is 1-D (T,), one sequence of token ids; --time-major applies to 2-D "
                                 "(T, B) ids")
            layout = LAYOUT_SINGLE
        else:
            layout = LAYOUT_TIME_MAJOR if time_major else LAYOUT_BATCH_FIRST
    else:
        tokens = False
        arr = _check_array(arr, where, time_major)
        if arr.ndim == 2:
            if time_major:
                raise InputError(f"{where} is 2-D (T, F), one sequence; --time-major applies to 3-D (T, B, F) input")
            layout = LAYOUT_SINGLE
        else:
            layout = LAYOUT_TIME_MAJOR if time_major else LAYOUT_BATCH_FIRST
    seqs = Sequences(path, key, arr, layout, None, None, None, tokens=tokens)
    b, t, f = seqs.shape
    if expected_features is not None and not tokens and f != expected_features:
        lay = {"single": "(T, F)", "batch_first": "(B, T, F)", "time_major": "(T, B, F)"}[layout]
        hint = ""
        if arr.ndim == 2 and arr.size <= 1 << 24:  # a (B, T) batch of token ids saved as floats?
            a = _read_small(arr)
            if np.all(np.isfinite(a)) and np.all(a == np.round(a)) and a.min(initial=0) >= 0:
                hint = "; if these are token ids, save them as integers (ids.astype(np.int64))"
        raise InputError(
            f"{where} has {f} features per step (read as {lay} {tuple(arr.shape)}) but the LSTM expects "
            f"{expected_features} (input_size of module '{module_name}'){hint}"
        )
    if lengths_path is not None:
        lp = spool(Path(lengths_path), "lengths", InputError)
        lobj = _load_any(lp, "lengths")
        if isinstance(lobj, dict):
            lk = next((k for k in _LENGTH_KEYS if k in lobj), None) or (next(iter(lobj)) if len(lobj) == 1 else None)
            if lk is None:
                raise InputError(f"{lp} holds {', '.join(lobj)}; expected one array named 'lengths'")
            lobj, lengths_source = lobj[lk], f"{lp.name}[{lk}]"
        else:
            lengths_source = lp.name
        given = _read_small(lobj)
        if lengths is not None and not (np.shape(given) == np.shape(lengths) and np.array_equal(given, lengths)):
            seqs.notes.append(f"note: --lengths {lp.name} replaces the lengths stored in {path.name} "
                              f"({np.asarray(lengths).tolist()[:8]}{' ...' if np.size(lengths) > 8 else ''})")
        lengths = given
    if lengths is not None:
        seqs.lengths = check_lengths(lengths, lengths_source, b, t)
        seqs.lengths_source = lengths_source
    return seqs


def _pick_key(path: Path, arrays: dict, key: str | None) -> str:
    names = list(arrays)
    if key is not None:
        if key not in arrays:
            raise InputError(f"{path} has no array {key!r}; it holds: {', '.join(names) or 'nothing'}")
        return key
    candidates = [k for k in names if k not in _LENGTH_KEYS]
    if not candidates:
        raise InputError(f"{path} holds no input array (found: {', '.join(names) or 'nothing'}); expected a (B, T, F) float array")
    if len(candidates) == 1:
        return candidates[0]
    for k in _DATA_KEYS:
        if k in candidates:
            return k
    floats = [k for k in candidates if arrays[k].dtype in _FLOAT_KINDS and arrays[k].ndim in (2, 3)]
    if len(floats) == 1:
        return floats[0]
    raise InputError(f"{path} holds several arrays ({', '.join(candidates)}) and none is obviously the input; pass --key NAME")


def _check_ids_array(arr, where: str, time_major: bool) -> None:
    if arr.ndim not in (1, 2):
        raise InputError(f"{where} is {arr.ndim}-D {tuple(arr.shape)} {arr.dtype.name}; token ids are (T,) for one "
                         f"sequence or {'(T, B)' if time_major else '(B, T)'} for a batch (float features are "
                         "(B, T, F))")
    if 0 in arr.shape:
        raise InputError(f"{where} is empty {tuple(arr.shape)}; nothing to run")


def _check_array(arr: np.ndarray, where: str, time_major: bool) -> np.ndarray:
    dt = arr.dtype
    if dt == object:
        raise InputError(f"{where} is an object array; expected float16/float32/float64 sequences")
    if dt.kind == "b":
        raise InputError(f"{where} is bool; expected float features (B, T, F) or integer token ids (B, T)")
    if dt.kind == "c":
        raise InputError(f"{where} is complex ({dt.name}); expected real float16/float32/float64 sequences")
    if dt.kind in "US":
        raise InputError(f"{where} holds strings (dtype {dt.str}); expected float16, float32 or float64 numbers")
    if dt.kind == "f" and dt.newbyteorder("=") in _FLOAT_KINDS and dt not in _FLOAT_KINDS:
        dt = dt.newbyteorder("=")  # big-endian file: converted to native byte order as it is read
    if dt not in _FLOAT_KINDS:
        raise InputError(f"{where} has dtype {dt}; expected float16, float32 or float64")
    if arr.ndim not in (2, 3):
        raise InputError(
            f"{where} is {arr.ndim}-D {tuple(arr.shape)}; expected (T, F) for one sequence or "
            f"{'(T, B, F)' if time_major else '(B, T, F)'} for a batch"
        )
    if arr.ndim == 2:
        t_axis, b_axis = 0, None
    else:
        t_axis, b_axis = (0, 1) if time_major else (1, 0)
    if arr.shape[t_axis] == 0:
        raise InputError(f"{where} has zero time steps {tuple(arr.shape)}; nothing to run")
    if b_axis is not None and arr.shape[b_axis] == 0:
        raise InputError(f"{where} has an empty batch {tuple(arr.shape)}; nothing to run")
    if arr.shape[-1] == 0:
        raise InputError(f"{where} has zero features per step {tuple(arr.shape)}")
    return arr


def check_lengths(lengths, source: str | None, batch: int, time: int) -> np.ndarray:
    """Validate lengths: 1-D, one per sequence, whole numbers in 1..T. Returns int64."""
    src = source or "lengths"
    arr = np.asarray(lengths)
    if arr.ndim != 1:
        raise InputError(f"{src} is {arr.ndim}-D {tuple(arr.shape)}; expected a 1-D array of {batch} lengths")
    if arr.dtype.kind not in "iuf":
        raise InputError(f"{src} has dtype {arr.dtype}; expected whole numbers (integers)")
    if arr.shape[0] != batch:
        raise InputError(f"{src} holds {arr.shape[0]} lengths but the input has {batch} sequences")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            bad = arr[~(np.isfinite(arr) & (arr == np.round(arr)))][0]
            raise InputError(f"{src} holds {float(bad)}, which is not a whole number; lengths count time steps")
    # Range checks before the cast: 1e19 or a uint64 past 2**63 would wrap (or warn) on the way to int64.
    if np.any(arr < 1):
        i = int(np.argmax(arr < 1))
        raise InputError(f"{src}[{i}] is {int(arr[i])}; every length must be at least 1")
    if np.any(arr > time):
        i = int(np.argmax(arr > time))
        raise InputError(f"{src}[{i}] is {int(arr[i])} but the input has only {time} time steps")
    return arr.astype(np.int64)


def reverse_steps(x: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    """Each sequence's own steps in reverse order, (B, T, F): ``out[b, t] = x[b, len[b]-1-t]`` for t < len[b];
    padding past len[b] stays where it was. Reversing twice gives ``x`` back. This is how a Keras layer with
    ``go_backwards=True`` reads its input (each sequence's real steps, last first)."""
    if lengths is None:
        return np.ascontiguousarray(x[:, ::-1])
    t = np.arange(x.shape[1])[None, :]
    lens = np.asarray(lengths, dtype=np.int64)[:, None]
    idx = np.where(t < lens, lens - 1 - t, t)  # (B, T)
    return np.take_along_axis(x, idx[:, :, None], axis=1)


def unflip_pieces(length: int, start: int, n: int) -> list[tuple[int, int, int, bool]]:
    """Where the rows of a block go in input time when the block holds steps start..start+n of one sequence
    with its own valid steps reversed (``reverse_steps``' order): ``[(lo, hi, at, reversed)]``, rows lo:hi to
    steps at..at+hi-lo, reversed or not. Valid steps (< ``length``) come back reversed, padding stays put."""
    k = min(max(int(length) - start, 0), n)  # valid steps of this sequence in the block
    out = [(0, k, int(length) - start - k, True)] if k else []
    return out + ([(k, n, start + k, False)] if k < n else [])


def reversed_reader(read_steps, lengths: np.ndarray | None, time: int, batch: int):
    """``read_steps(start, stop)`` of the sequences as ``reverse_steps`` orders them, for streamed runs: each
    chunk reads only the steps it needs (once per distinct length)."""

    def read(start: int, stop: int) -> np.ndarray:
        if lengths is None:
            return read_steps(time - stop, time - start)[:, ::-1].copy()  # a copy: no negative strides, even for 1 step
        out = None
        for n in np.unique(lengths):
            rows = np.nonzero(lengths == n)[0]
            lo, hi = max(int(n) - stop, 0), max(int(n) - start, 0)
            if hi <= lo:
                continue
            block = read_steps(lo, hi)[rows][:, ::-1]
            if out is None:
                out = np.zeros((batch, stop - start, block.shape[2]), dtype=block.dtype)
            out[rows, : hi - lo] = block
        if out is None:  # every sequence has ended before this chunk: padding only, left where it was
            return read_steps(start, stop)
        pad = np.nonzero(lengths < stop)[0]  # padding past each length: the original steps, as reverse_steps
        if pad.size:
            orig = read_steps(start, stop)
            keep = np.arange(start, stop)[None, :] >= lengths[pad][:, None]
            out[pad] = np.where(keep[:, :, None], orig[pad], out[pad])
        return out

    return read
