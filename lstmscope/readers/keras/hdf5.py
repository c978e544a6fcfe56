"""HDF5 access for the Keras reader: only hard links inside the file are followed; soft and external links,
virtual datasets and external storage are refused. h5py is imported inside the functions (only a read needs it)."""

from __future__ import annotations

from typing import Any

import numpy as np

from lstmscope.readers.keras.found import MAX_OBJECTS, _fail


def _keys(group) -> list[str]:
    """A group's member names; names that are not UTF-8 (h5py gives them as bytes) are no Keras group's."""
    names = [n for n in group.keys() if isinstance(n, str)]
    if len(names) > MAX_OBJECTS:
        _fail(f"HDF5 group {group.name} has {len(names)} members; too many for a Keras model")
    return names


def _child(group, name: str, shown: str | None = None):
    """``group[name]`` for a hard link; None when absent; refuses soft and external links."""
    import h5py

    link = group.get(name, getlink=True)
    if link is None:
        return None
    where = shown or f"{group.name.rstrip('/')}/{name}"
    if isinstance(link, h5py.ExternalLink):
        _fail(f"{where} is an external link to {link.filename}:{link.path}; lstmscope never follows links out of "
              "the file")
    if not isinstance(link, h5py.HardLink):
        _fail(f"{where} is a {type(link).__name__}; lstmscope follows only the file's own (hard) links")
    return group[name]


def _dataset_at(group, relative: str, shown: str):
    """The dataset at ``relative`` (a weight name with '/'s) under ``group``, link by link."""
    import h5py

    node = group
    for part in [p for p in relative.split("/") if p]:
        if not isinstance(node, h5py.Group):
            return None
        node = _child(node, part, shown)
        if node is None:
            return None
    return node if isinstance(node, h5py.Dataset) else None


def _attr(obj, name: str) -> Any:
    """An attribute's value, read only when HDF5 says it holds text (fixed or variable-length strings) or is an
    empty list: a damaged file can give an attribute a type whose reading crashes the HDF5 library."""
    import h5py

    aid = h5py.h5a.open(obj.id, name.encode("utf-8"))
    space = aid.get_space()
    kind = space.get_simple_extent_type()
    count = int(np.prod(space.get_simple_extent_dims() or (), dtype=np.float64)) if kind == h5py.h5s.SIMPLE else 1
    if kind == h5py.h5s.NULL or count == 0:
        return np.array([], dtype=np.float64)
    if aid.get_type().get_class() != h5py.h5t.STRING or count > MAX_OBJECTS:
        _fail(f"HDF5 attribute {name!r} of {obj.name} is not text; the file is damaged or not a Keras model")
    return obj.attrs[name]


def _attr_text(obj, name: str) -> str:
    v = _attr(obj, name)
    if isinstance(v, np.ndarray) and v.size == 1 and v.dtype.kind in "SUO":
        v = v.reshape(-1)[0]
    if isinstance(v, (bytes, np.bytes_)):
        return bytes(v).decode("utf-8")
    if isinstance(v, str):
        return str(v)
    _fail(f"HDF5 attribute {name!r} of {obj.name} is not text")


def _attr_list(obj, name: str) -> list[str]:
    """A list attribute as Keras writes it: ``name``, or split in chunks ``name0``, ``name1``, ..."""
    attrs = obj.attrs
    if name in attrs:
        chunks = [_attr(obj, name)]
    else:
        chunks, i = [], 0
        while f"{name}{i}" in attrs and i < MAX_OBJECTS:
            chunks.append(_attr(obj, f"{name}{i}"))
            i += 1
    out: list[str] = []
    for chunk in chunks:
        for v in np.asarray(chunk).reshape(-1):
            if isinstance(v, (bytes, np.bytes_)):
                out.append(bytes(v).decode("utf-8"))
            elif isinstance(v, str):
                out.append(str(v))
            else:
                _fail(f"HDF5 attribute {name!r} of {obj.name} is not a list of names")
    return out


def _read_dataset(f, path: str, shape: tuple[int, ...]) -> np.ndarray:
    import h5py

    node = f
    for part in [p for p in path.split("/") if p]:  # the listing checked links; check again: the file may have changed
        node = _child(node, part, path) if isinstance(node, h5py.Group) else None
        if node is None:
            _fail(f"{path} is no longer in the file (did it change?)")
    if not isinstance(node, h5py.Dataset) or node.is_virtual or node.external or tuple(node.shape or ()) != shape:
        _fail(f"{path} changed since it was listed (did the file change?)")
    a = np.asarray(node[()])
    if a.dtype.kind != "f":
        _fail(f"{path} is {a.dtype}; an LSTM weight must be floating point")
    return a.astype(a.dtype.newbyteorder("="), copy=False)
