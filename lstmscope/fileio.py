"""Atomic file writes: a temporary file in the target directory, then ``os.replace``.

Nothing is ever half-written: on any failure (KeyboardInterrupt included) the temporary file is
removed and the target is untouched. An existing target is only replaced with ``force``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO, Iterator

from lstmscope.errors import LstmscopeError, OutputError


STREAM_MAX = 64 << 30  # bytes lstmscope copies from a pipe before it gives up (a stream that never ends)
_SPOOLED: dict[str, Path] = {}  # stream -> the regular file holding its bytes, for this process


def a(word: str) -> str:
    """``word`` with its indefinite article: "an input", "a checkpoint"."""
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def is_stream(path: Path) -> bool:
    """``-`` (standard input), a named pipe or a character device such as ``/dev/fd/63`` (``<(cat x.npy)``)."""
    if str(path) == "-":
        return True
    try:
        import stat

        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def spool(path: Path, what: str, error: type[LstmscopeError]) -> Path:
    """A path lstmscope can seek in: ``path`` itself, or, for a stream (see is_stream), a temporary regular file
    holding its bytes (named after it, removed when lstmscope exits). A stream is read once: the same stream
    given twice is the same file. Readers need to seek (npy headers, zip directories, HDF5), so every input
    may be a pipe this way; an empty stream is refused like an empty file."""
    path = Path(path)
    if not is_stream(path):
        return path
    key = str(path)
    if key in _SPOOLED:
        return _SPOOLED[key]
    import atexit
    import shutil
    import sys

    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="lstmscope-stream-"))
    atexit.register(shutil.rmtree, folder, True)
    target = folder / ("stdin" if key == "-" else path.name or "stream")
    total = 0
    try:
        src = sys.stdin.buffer if key == "-" else open(path, "rb")
        with open(target, "wb") as out:
            for block in iter(lambda: src.read(1 << 20), b""):
                total += len(block)
                if total > STREAM_MAX:
                    raise error(f"{path}: the stream gives more than {STREAM_MAX >> 30} GiB; save it to a file")
                out.write(block)
        if src is not sys.stdin.buffer:
            src.close()
    except OSError as e:
        raise error(f"{path}: cannot read the {what} stream ({e.strerror or e})") from None
    if total == 0:
        raise error(f"{'standard input' if key == '-' else path} gave no bytes; expected {a(what)} file")
    _SPOOLED[key] = target
    return target


def given(path: str | os.PathLike) -> str:
    """The name the user gave for ``path``: ``-`` or ``/dev/fd/63`` for a file spool() made of a stream, else
    the path itself. Reports and JSON name this, not the temporary file, which is gone when lstmscope exits."""
    p = Path(path)
    for key, target in _SPOOLED.items():
        if target == p:
            return key
    return str(path)


def unspooled(text: str) -> str:
    """``text`` (an error or a note) with every temporary copy spool() made named as the user gave it."""
    for key, target in _SPOOLED.items():
        text = text.replace(str(target), "stdin" if key == "-" else key)
    return text


def shown_name(path: str | os.PathLike) -> str:
    """A file's short name in reports: its base name, or for a stream what the user gave (``stdin`` for ``-``,
    ``/dev/fd/63`` whole, whose base name alone says nothing)."""
    name = given(path)
    if name == "-":
        return "stdin"
    return name if name != str(path) else Path(path).name


def check_source(path: Path, what: str, error: type[LstmscopeError]) -> None:
    """Refuse a path that is missing, a directory, unreadable or empty, naming ``what`` it should be."""
    if not path.exists():
        raise error(f"{path}: no such {what} file")
    if path.is_dir():
        raise error(f"{path} is a directory; expected {a(what)} file")
    if not os.access(path, os.R_OK):
        raise error(f"{path}: permission denied; cannot read the {what} file")
    if path.stat().st_size == 0:
        raise error(f"{path} is empty (0 bytes); expected {a(what)} file")


def check_target(path: Path, force: bool) -> None:
    """Refuse early (before any work) when ``path`` cannot or must not be written."""
    if path.is_dir():
        raise OutputError(f"{path} is a directory; give a file name, e.g. {path / 'state.safetensors'}")
    if path.exists() and not force:
        raise OutputError(f"{path} already exists; pass --force to overwrite it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {path}: directory {parent} is not writable")


OTHER_FORMATS = {".npy": "a NumPy array (np.load)", ".npz": "a NumPy archive (np.load)", ".pt": "a torch file",
                 ".pth": "a torch file", ".h5": "an HDF5 file", ".keras": "a Keras archive", ".onnx": "an ONNX model",
                 ".json": "JSON", ".png": "an image"}


SAFETENSORS_SUFFIXES = (".safetensors", ".st")


def check_safetensors_name(path: Path, what: str = "snapshot") -> str | None:
    """Refuse an output name that promises another format: lstmscope writes safetensors, which np.load (and
    torch.load, ...) cannot read, so ``-o out.npy`` would make a file its name lies about. Any other name that
    does not say safetensors is written, with a note (returned) saying what the file is."""
    suffix = Path(path).suffix.lower()
    kind = OTHER_FORMATS.get(suffix)
    if kind is not None:
        raise OutputError(f"{path}: lstmscope writes the {what} as safetensors, but the name says {kind}; "
                          f"name it {Path(path).with_suffix('.safetensors').name} (read it with "
                          "safetensors.numpy.load_file)")
    if suffix in SAFETENSORS_SUFFIXES:
        return None
    return (f"note: {Path(path).name} is a safetensors file whatever its name says (read it with "
            f"safetensors.numpy.load_file); a .safetensors name tells others so")


def refuse_overwriting_sources(out: Path, *sources) -> None:
    """An output that is one of the command's own inputs would destroy it: refuse, even with --force."""
    for src in sources:
        if src is not None and Path(src).exists() and out.exists() and os.path.samefile(src, out):
            raise OutputError(f"{out} is also an input of this command; give the output another name (--force cannot allow this)")


@contextlib.contextmanager
def atomic_writer(path: Path, force: bool) -> Iterator[BinaryIO]:
    """Yield a binary file; on clean exit it replaces ``path``; on any exception it vanishes."""
    path = Path(path)
    check_target(path, force)
    try:
        import tempfile  # here: the torch-free commands that only read start without it

        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror}") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a finished file gets the usual mode
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if path.exists() and not force:  # appeared while we worked
            raise OutputError(f"{path} already exists; pass --force to overwrite it")
        _replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _replace(tmp: str, path: Path) -> None:
    """The one step that publishes a finished file (a separate function so tests can fail it)."""
    try:
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror}") from None


def file_sha256(path: Path) -> str:
    import hashlib  # here: a hash is asked for rarely (lazily, see Checkpoint.sha256)

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
