"""Atomic file writes: a temporary file in the target directory, then ``os.replace``.

Nothing is ever half-written: on any failure (KeyboardInterrupt included) the temporary file is
removed and the target is untouched. An existing target is only replaced with ``force``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from lstmscope.errors import LstmscopeError, OutputError


def check_source(path: Path, what: str, error: type[LstmscopeError]) -> None:
    """Refuse a path that is missing, a directory, unreadable or empty, naming ``what`` it should be."""
    if not path.exists():
        raise error(f"{path}: no such {what} file")
    if path.is_dir():
        raise error(f"{path} is a directory; expected a {what} file")
    if not os.access(path, os.R_OK):
        raise error(f"{path}: permission denied; cannot read the {what} file")
    if path.stat().st_size == 0:
        raise error(f"{path} is empty (0 bytes); expected a {what} file")


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


def check_safetensors_name(path: Path, what: str = "snapshot") -> None:
    """Refuse an output name that promises another format: lstmscope writes safetensors, which np.load (and
    torch.load, ...) cannot read, so ``-o out.npy`` would make a file its name lies about."""
    kind = OTHER_FORMATS.get(Path(path).suffix.lower())
    if kind is not None:
        raise OutputError(f"{path}: lstmscope writes the {what} as safetensors, but the name says {kind}; "
                          f"name it {Path(path).with_suffix('.safetensors').name} (read it with "
                          "safetensors.numpy.load_file)")


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
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
