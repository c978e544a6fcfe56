"""List the tensors of a torch file (names, shapes, dtypes) without importing torch.

``import torch`` costs about 1.5 s, and ``inspect`` needs no tensor values. This module reads the
pickle of a torch file (``*/data.pkl`` in a zip file; the pickles of the legacy format) with
:class:`ListingUnpickler`, the restricted reader of :mod:`lstmscope.readers.safe_pickle` with torch's own
globals answered by torch-free records instead of torch:

* the tensor rebuild functions (``torch._utils._rebuild_tensor_v2``, ``_rebuild_tensor``,
  ``_rebuild_tensor_v3``, ``_rebuild_parameter``, ``_rebuild_parameter_with_state``) give a
  :class:`TensorRecord` (shape, dtype), after the checks ``Tensor.set_`` would make;
* storage types (any global named like ``FloatStorage``, as torch's loader maps them, and
  ``torch.storage.UntypedStorage``) and dtype globals give their dtype name; persistent ids
  ``('storage', type, key, location, numel)`` are answered from the zip's directory (the record
  exists, is stored uncompressed and holds exactly that many bytes) without reading it; the
  legacy format's storages are checked by their 8-byte length headers, skipping their data;
* ``torch.Size`` and ``torch.device`` give a tuple and a small record.

Each :class:`TensorRecord` also says where its data is (storage, offset, stride), so that
lstmscope.readers.torch_values can read the files torch cannot: legacy files with untyped storages (uint16,
uint32, uint64 and float8 tensors, which torch's legacy loader fails on, are listed here all the same) and
TorchScript archives (lstmscope.readers.torchscript, which reuses this reader for their pickles).

Every other global is handled exactly as by :class:`~lstmscope.readers.safe_pickle.RestrictedUnpickler`:
plain containers are built, anything else is an inert stub, never imported and never called, and
is recorded in the same :class:`~lstmscope.readers.safe_pickle.PickleReport`.

The reader aims to give exactly what torch would give, or nothing: anything it does not model
(another torch global, a tensor subclass, quantized or sparse tensors, a TorchScript archive, a
storage view, a record that does not fit, a torch error it would have to predict) raises
:class:`Unsupported`, and the caller reads the file with torch instead. torch's weights-only
allowlist is copied below (``TORCH_WEIGHTS_ONLY_GLOBALS``) so that no global torch would resolve
is ever stubbed here; tests compare it with the installed torch's.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import struct
import zipfile
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

from lstmscope.dtypes import ITEMSIZE
from lstmscope.readers.safe_pickle import (_MARKERS, Inert, PickleReport, RestrictedUnpickler, StubGlobal, _ascii,
                                   _latin1_encode, python3_name)

__all__ = ["ListingUnpickler", "TensorRecord", "Unsupported", "list_torch_file"]

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL_VERSION = 1001  # torch.serialization.PROTOCOL_VERSION
MAX_TEXT_LINE = 1 << 20  # a protocol 0/1 text argument longer than this is left to torch


class Unsupported(Exception):
    """The file needs something this reader does not model: read it with torch."""


# --- records ----------------------------------------------------------------------------------------

class NotAName:
    """What the pickle may build but never use as a dict key or a name (formatting it is refused as Unsupported,
    which hands the file to torch): torch's name for it would show values or run code. ``what`` says what it is."""

    __slots__ = ()
    what = "an object"

    def __format__(self, spec: str) -> str:
        raise Unsupported(f"{self.what} used as a name")


class TensorRecord(NotAName):
    """A tensor as torch would rebuild it, without its data (and where its data is, for
    lstmscope.readers.torch_values: its storage, offset and stride, in elements)."""

    __slots__ = ("shape", "dtype", "storage", "offset", "stride")
    what = "a tensor"  # as a dict key, torch's name would show its values

    def __init__(self, shape: tuple[int, ...], dtype: str, storage: "_Storage | None" = None, offset: int = 0,
                 stride: tuple[int, ...] = ()):
        self.shape = shape
        self.dtype = dtype  # as str(torch.dtype) without "torch.": "float32", "bfloat16", ...
        self.storage = storage
        self.offset = offset
        self.stride = stride

    @property
    def untyped(self) -> bool:
        """On an untyped storage (bytes): how torch saves dtypes without a storage class (uint16/32/64, float8)."""
        return self.storage is not None and self.storage.untyped

    def __repr__(self) -> str:
        return f"<TensorRecord {self.dtype} {self.shape}>"


class _DType:
    """A ``torch.<dtype>`` global. One instance per name, as torch's dtypes are singletons."""

    __slots__ = ("name",)
    _instances: dict[str, "_DType"] = {}

    def __new__(cls, name: str) -> "_DType":
        inst = cls._instances.get(name)
        if inst is None:
            inst = super().__new__(cls)
            inst.name = name
            cls._instances[name] = inst
        return inst

    def __str__(self) -> str:
        return f"torch.{self.name}"


class _StorageType(NotAName):
    """A storage class named in a persistent id: ``torch.FloatStorage`` and the like, or ``UntypedStorage``."""

    __slots__ = ("dtype",)
    what = "a storage type"

    def __init__(self, dtype: str):
        self.dtype = dtype


class _Storage(NotAName):
    """A storage a persistent id names: its dtype and size, and where its bytes are, never the bytes."""

    __slots__ = ("dtype", "numel", "nbytes", "key", "untyped", "where")
    what = "a storage"

    def __init__(self, dtype: str, numel: int, key: str = "", untyped: bool = False):
        self.dtype = dtype
        self.numel = numel
        self.nbytes = numel * ITEMSIZE[dtype]
        self.key = key
        self.untyped = untyped  # torch.storage.UntypedStorage: bytes, the dtype is the tensor's
        self.where: Any = None  # zip: the record's name; legacy: the file offset of its first byte


class _Device:
    """``torch.device(type[, index])``."""

    __slots__ = ("type", "index")

    def __init__(self, type_: str, index: int | None):
        self.type = type_
        self.index = index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Device) and (self.type, self.index) == (other.type, other.index)

    def __hash__(self) -> int:
        return hash((self.type, self.index))

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"


class _Handled(NotAName):
    """A torch global this reader answers itself (a rebuild function, torch.Size, torch.device)."""

    __slots__ = ("qualified",)
    what = "a torch function"

    def __init__(self, qualified: str):
        self.qualified = qualified


# --- what torch knows -------------------------------------------------------------------------------

# dtypes that may require grad (torch refuses requires_grad=True on the others; that error is torch's to give)
_GRAD_DTYPES = frozenset({"float64", "float32", "float16", "bfloat16", "complex128", "complex64"})
# torch.storage._dtype_to_storage_type_map, inverted (the quantized ones are left to torch)
STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16", "LongStorage": "int64",
    "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "BFloat16Storage": "bfloat16", "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
}
_QUANTIZED_STORAGES = frozenset({"QInt8Storage", "QInt32Storage", "QUInt8Storage", "QUInt4x2Storage",
                                 "QUInt2x4Storage"})

# torch's dtype globals (torch.float32, ...), by the names torch pickles them under
DTYPE_NAMES = (
    "bfloat16", "bits16", "bits1x8", "bits2x4", "bits4x2", "bits8", "bool", "complex128", "complex32", "complex64",
    "float16", "float32", "float4_e2m1fn_x2", "float64", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2",
    "float8_e5m2fnuz", "float8_e8m0fnu", "int16", "int32", "int64", "int8", "qint32", "qint8", "quint2x4",
    "quint4x2", "quint8", "uint16", "uint32", "uint64", "uint8",
    *(f"{b}{n}" for b in ("int", "uint") for n in range(1, 8)),
)

# torch 2.13's weights-only allowlist (torch._weights_only_unpickler._get_allowed_globals()), by name.
# A global listed here, or in one of its torch modules, is never stubbed by this reader: it is either
# answered below or left to torch. tests/test_inspect_torch_free.py checks the installed torch's list.
TORCH_WEIGHTS_ONLY_GLOBALS = frozenset(
    ["_codecs.encode", "builtins.bytearray", "builtins.complex", "builtins.set", "collections.Counter",
     "collections.OrderedDict", "torch.Size", "torch.Tensor", "torch.device", "torch.nn.parameter.Parameter",
     "torch.serialization._get_layout", "torch.storage.TypedStorage", "torch.storage.UntypedStorage"]
    + [f"torch._utils._rebuild_{n}" for n in (
        "device_tensor_from_cpu_tensor", "device_tensor_from_numpy", "meta_tensor_no_storage", "nested_tensor",
        "parameter", "parameter_with_state", "qtensor", "sparse_tensor", "tensor", "tensor_v2", "tensor_v3",
        "wrapper_subclass")]
    + ["torch._tensor._rebuild_from_type_v2"]
    + [f"{m}.{t}{kind}" for m in ("torch", "torch.cuda")
       for t in ("BFloat16", "Bool", "Byte", "Char", "Double", "Float", "Half", "Int", "Long", "Short")
       for kind in ("Storage", "Tensor")]
    + [f"{m}.Complex{t}Storage" for m in ("torch", "torch.cuda") for t in ("Double", "Float")]
    + [f"torch.{q}Storage" for q in ("QInt32", "QInt8", "QUInt2x4", "QUInt4x2", "QUInt8")]
    + [f"{m}.{t}Tensor" for m in ("torch.sparse", "torch.cuda.sparse")
       for t in ("BFloat16", "Byte", "Char", "Double", "Float", "Half", "Int", "Long", "Short")]
    + [f"torch.{d}" for d in DTYPE_NAMES]
    + [f"torch.per_{s}" for s in ("channel_affine", "channel_affine_float_qparams", "channel_symmetric",
                                  "tensor_affine", "tensor_symmetric")]
)
_TORCH_ALLOWED_MODULES = frozenset(k.rsplit(".", 1)[0] for k in TORCH_WEIGHTS_ONLY_GLOBALS if k.startswith("torch"))

# Plain Python callables on the restricted reader's allowlist: built as it builds them.
_PLAIN = {"collections.OrderedDict": OrderedDict, "collections.Counter": Counter, "builtins.set": set,
          "builtins.frozenset": frozenset, "builtins.bytes": bytes, "builtins.bytearray": bytearray,
          "builtins.complex": complex, "_codecs.encode": _latin1_encode}
_PLAIN_TYPES = frozenset(v for v in _PLAIN.values() if isinstance(v, type))

_REBUILD_V2 = _Handled("torch._utils._rebuild_tensor_v2")
_REBUILD_V1 = _Handled("torch._utils._rebuild_tensor")
_REBUILD_V3 = _Handled("torch._utils._rebuild_tensor_v3")
_PARAMETER = _Handled("torch._utils._rebuild_parameter")
_PARAMETER_STATE = _Handled("torch._utils._rebuild_parameter_with_state")
_SIZE = _Handled("torch.Size")
_DEVICE = _Handled("torch.device")
_UNTYPED = _StorageType("uint8")  # torch.storage.UntypedStorage: bytes
_HANDLED: dict[str, Any] = {h.qualified: h for h in (_REBUILD_V2, _REBUILD_V1, _REBUILD_V3, _PARAMETER,
                                                      _PARAMETER_STATE, _SIZE, _DEVICE)}
_HANDLED["torch.storage.UntypedStorage"] = _UNTYPED
_HANDLED.update({f"torch.{d}": _DType(d) for d in DTYPE_NAMES})
_STORAGE_TYPES = {name: _StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()}
_DEVICE_TYPE = re.compile(r"(cpu|cuda|mps|meta|xpu)(:(0|[1-9][0-9]{0,3}))?")


def _ints(value: Any) -> tuple[int, ...]:
    if type(value) not in (tuple, list) or not all(type(v) is int for v in value):
        raise Unsupported("a tensor size or stride that is not whole numbers")
    return tuple(value)


def _empty(value: Any) -> bool:
    """backward hooks and tensor metadata as torch.save writes them: empty."""
    return value is None or (type(value) in (dict, OrderedDict) and not value)


# --- the unpickler ----------------------------------------------------------------------------------

class ListingUnpickler(RestrictedUnpickler):
    """:class:`~lstmscope.readers.safe_pickle.RestrictedUnpickler` with torch's globals answered torch-free."""

    def __init__(self, file, *, report: PickleReport, storages: "_Storages"):
        super().__init__(file, report=report, encoding="utf-8")  # torch.load's default encoding
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        # torch's loader (UnpicklerWrapper.find_class) goes first: storage names, then a module rename
        if type(name) is str and "Storage" in name:
            if name in _STORAGE_TYPES:
                return _STORAGE_TYPES[name]
            if name in _QUANTIZED_STORAGES:
                raise Unsupported(f"quantized storage {name}")
        if type(module) is str and module == "torch.tensor":
            module = "torch._tensor"
        # then the restricted reader's own lookup (RestrictedUnpickler.find_class), with torch-free answers
        if type(module) is not str or type(name) is not str:
            raise Unsupported("a global with a non-string module or name")
        module, name = python3_name(module, name, self.proto < 3 and self.fix_imports)
        key = f"{module}.{name}"
        if key in _MARKERS:
            return _MARKERS[key]
        if key in _PLAIN:
            return _PLAIN[key]
        if key in _HANDLED:
            return _HANDLED[key]
        if key in TORCH_WEIGHTS_ONLY_GLOBALS or module in _TORCH_ALLOWED_MODULES:
            raise Unsupported(f"torch global {key}")  # torch would resolve it, not stub it
        self.report._stub(key)
        return StubGlobal(module, name)

    def _persistent(self, pid: Any) -> Any:
        if type(pid) is not tuple or not pid:
            raise Unsupported("a persistent id that is not a tuple")
        kind = _ascii(pid[0])
        if kind == "storage":
            return self._storages.resolve(pid[1:])
        if kind == "module" and self._storages.legacy and len(pid) == 4 and isinstance(pid[1], StubGlobal):
            return pid[1]  # legacy full-module pickles: ("module", class, source file, source), as safe_pickle does
        raise Unsupported(f"persistent id {kind!r}")

    def _new(self, cls: Any, args: Any, kwargs: Any = None) -> Any:
        if isinstance(cls, StubGlobal):
            return self._instance(cls, args if isinstance(args, tuple) else ())
        if cls in _PLAIN_TYPES and isinstance(args, tuple) and (kwargs is None or type(kwargs) is dict):
            return cls.__new__(cls, *args, **(kwargs or {}))
        raise Unsupported("an object this reader does not build")

    def _call(self, func: Any, args: Any) -> Any:
        if not isinstance(args, tuple):
            raise Unsupported("call arguments that are not a tuple")
        if isinstance(func, (StubGlobal, Inert)):  # copyreg markers, stubs, stub objects: as safe_pickle does
            return super()._call(func, args)
        if isinstance(func, _Handled):
            return self._torch_call(func, args)
        if func in (bytes, bytearray) and args and type(args[0]) is int:
            raise Unsupported("bytes of a given length")  # an allocation: torch's to make or refuse
        if any(func is f for f in _PLAIN.values()):
            return func(*args)
        raise Unsupported(f"a call of {type(func).__name__}")

    def _torch_call(self, func: _Handled, args: tuple) -> Any:
        if func is _REBUILD_V2 and len(args) in (6, 7):
            storage, offset, size, stride, requires_grad, hooks, *metadata = args
            return self._tensor(storage, offset, size, stride, storage.dtype if isinstance(storage, _Storage) else None,
                                requires_grad, hooks, metadata[0] if metadata else None)
        if func is _REBUILD_V1 and len(args) == 4:
            storage, offset, size, stride = args
            return self._tensor(storage, offset, size, stride, storage.dtype if isinstance(storage, _Storage) else None,
                                False, None, None)
        if func is _REBUILD_V3 and len(args) in (7, 8):
            storage, offset, size, stride, requires_grad, hooks, dtype, *metadata = args
            if not isinstance(dtype, _DType):
                raise Unsupported("_rebuild_tensor_v3 without a dtype")
            return self._tensor(storage, offset, size, stride, dtype.name, requires_grad, hooks,
                                metadata[0] if metadata else None)
        if func in (_PARAMETER, _PARAMETER_STATE) and len(args) == (3 if func is _PARAMETER else 4):
            data, requires_grad, hooks = args[:3]
            state = args[3] if func is _PARAMETER_STATE else None
            if not (isinstance(data, TensorRecord) and _empty(hooks) and type(requires_grad) is bool
                    and (_empty(state) or (type(state) is tuple and len(state) == 2 and all(map(_empty, state))))):
                raise Unsupported("a Parameter with hooks or state")
            if requires_grad and data.dtype not in _GRAD_DTYPES:
                raise Unsupported("requires_grad on a dtype that cannot have gradients")
            return TensorRecord(data.shape, data.dtype, data.storage, data.offset, data.stride)
        if func is _SIZE and len(args) == 1:
            return _ints(args[0])
        if func is _DEVICE and len(args) in (1, 2) and type(args[0]) is str and _DEVICE_TYPE.fullmatch(args[0]):
            if len(args) == 1:
                type_, _, index = args[0].partition(":")
                return _Device(type_, int(index) if index else None)
            if ":" not in args[0] and type(args[1]) is int and 0 <= args[1] < 10_000:
                return _Device(args[0], args[1])
        raise Unsupported(f"a call of {func.qualified} this reader does not model")

    @staticmethod
    def _tensor(storage: Any, offset: Any, size: Any, stride: Any, dtype: str | None, requires_grad: Any,
                hooks: Any, metadata: Any) -> TensorRecord:
        """Tensor.set_(storage, offset, size, stride)'s checks, then the record."""
        if not isinstance(storage, _Storage) or dtype not in ITEMSIZE:
            raise Unsupported("a tensor on a storage this reader does not model")
        size, stride = _ints(size), _ints(stride)
        if (type(offset) is not int or offset < 0 or len(size) != len(stride) or min(size + stride, default=0) < 0
                or type(requires_grad) is not bool or not _empty(hooks) or not _empty(metadata)):
            raise Unsupported("a tensor with unusual geometry, hooks or metadata")
        if requires_grad and dtype not in _GRAD_DTYPES:
            raise Unsupported("requires_grad on a dtype that cannot have gradients")
        if all(size):  # an empty tensor fits any storage
            extent = 1 + sum((n - 1) * s for n, s in zip(size, stride))
            if (offset + extent) * ITEMSIZE[dtype] > storage.nbytes:
                raise Unsupported("a tensor larger than its storage")  # torch's error to give
        return TensorRecord(size, dtype, storage, offset, stride)

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, Inert):
            inst._build(state)
        elif type(inst) is OrderedDict and isinstance(state, dict) and all(
                type(k) is str and not hasattr(OrderedDict, k) for k in state):  # as safe_pickle allows
            inst.__dict__.update(state)
        else:
            raise Unsupported(f"BUILD on a {type(inst).__name__}")

    dispatch = dict(RestrictedUnpickler.dispatch)
    dispatch[pickle.BUILD[0]] = load_build


# --- storages ---------------------------------------------------------------------------------------

class _Storages:
    """Answers ``('storage', ...)`` persistent ids, once per key, as torch's loaders cache them."""

    legacy = False

    def __init__(self) -> None:
        self.seen: dict[str, _Storage] = {}

    def _get(self, storage_type: Any, key: Any, location: Any, numel: Any) -> _Storage:
        if (not isinstance(storage_type, _StorageType) or type(key) is not str or type(numel) is not int
                or numel < 0 or not isinstance(location, (str, bytes))):
            raise Unsupported("a storage id this reader does not model")
        known = self.seen.get(key)
        if known is not None:
            if (known.dtype, known.numel) != (storage_type.dtype, numel):
                raise Unsupported("one storage named with two types or sizes")  # torch's caching decides
            return known
        storage = self.seen[key] = _Storage(storage_type.dtype, numel, key, storage_type is _UNTYPED)
        self.check(key, storage)
        return storage

    def check(self, key: str, storage: _Storage) -> None:
        pass

    def resolve(self, data: tuple) -> _Storage:
        raise NotImplementedError


class _ZipStorages(_Storages):
    """Zip records ``<archive>/data/<key>``: present, stored uncompressed, exactly ``numel`` elements long.
    (TorchScript's constants.pkl names records under ``<archive>/constants/``: ``folder``.)"""

    def __init__(self, infos: dict[str, zipfile.ZipInfo], root: str, folder: str = "data/"):
        super().__init__()
        self.infos = infos
        self.root = root
        self.folder = folder

    def resolve(self, data: tuple) -> _Storage:
        if len(data) != 4:
            raise Unsupported("a zip storage id of another length")
        return self._get(*data)

    def check(self, key: str, storage: _Storage) -> None:
        name = f"{self.root}{self.folder}{key}"
        info = self.infos.get(name)
        if info is None or info.compress_type != zipfile.ZIP_STORED or info.file_size != storage.nbytes:
            raise Unsupported(f"storage record {key!r} is missing or does not fit")
        storage.where = name


class _LegacyStorages(_Storages):
    """The legacy format: storages follow the pickles, each as an 8-byte element count and its bytes."""

    legacy = True

    def resolve(self, data: tuple) -> _Storage:
        if len(data) != 5 or data[4] is not None:
            raise Unsupported("a legacy storage view")
        # an untyped storage (bytes; numel counts bytes) holds a dtype without a storage class (uint16/32/64,
        # float8): torch's legacy loader asks UntypedStorage for a dtype and fails, so lstmscope reads those
        # files itself (lstmscope.readers.torch_values); listing them works the same
        return self._get(*data[:4])

    def verify(self, f, keys: Any, size: int) -> None:
        """What torch reads after the pickles, checked by its length headers without reading the data."""
        if type(keys) is not list or not all(type(k) is str and k in self.seen for k in keys):
            raise Unsupported("a legacy storage key list this reader does not model")
        pos = f.tell()
        for key in keys:
            f.seek(pos)
            head = f.read(8)
            if len(head) != 8 or struct.unpack("<q", head)[0] != self.seen[key].numel:
                raise Unsupported(f"legacy storage {key!r} does not have the size its tensors claim")
            self.seen[key].where = pos + 8
            pos += 8 + self.seen[key].nbytes
            if pos > size:
                raise Unsupported(f"legacy storage {key!r} is truncated")


class _BoundedFile:
    """A file for pickle to read: no read past the end, no text line longer than MAX_TEXT_LINE."""

    def __init__(self, f, size: int):
        self.f = f
        self.size = size

    def read(self, n: int = -1) -> bytes:
        left = max(self.size - self.f.tell(), 0)
        return self.f.read(left if n is None or n < 0 else min(n, left))

    def readline(self) -> bytes:
        line = self.f.readline(MAX_TEXT_LINE)
        if len(line) == MAX_TEXT_LINE and not line.endswith(b"\n"):
            raise Unsupported("a very long text line in a pickle")
        return line

    def tell(self) -> int:
        return self.f.tell()


# --- files ------------------------------------------------------------------------------------------

def list_torch_file(path: str | os.PathLike, legacy: bool) -> tuple[Any, PickleReport]:
    """The object in a torch file with :class:`TensorRecord` for its tensors, and what was stubbed and refused.

    Raises :class:`Unsupported` (or any other exception) when torch has to read the file instead.
    """
    path = Path(path)
    report = PickleReport()
    if legacy:
        return _list_legacy(path, report), report
    return _list_zip(path, report), report


def zip_records(z: "zipfile.ZipFile", writer: str) -> tuple[str, dict[str, "zipfile.ZipInfo"]]:
    """The archive folder every record of a torch zip lies in (torch's reader takes it from the first record's
    directory) and the records by name; Unsupported for a layout ``writer`` (torch.save, torch.jit.save) does
    not write: no folder, records outside it, or a name twice."""
    infos = z.infolist()
    names = [i.filename for i in infos]
    root = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] else ""
    if not root or len(set(names)) != len(names) or not all(n.startswith(root) for n in names):
        raise Unsupported(f"a zip layout {writer} does not write (one folder holding every record)")
    return root, {i.filename: i for i in infos}


def _list_zip(path: Path, report: PickleReport) -> Any:
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # torch.serialization._is_zipfile looks at the first bytes only
            raise Unsupported("a zip file that does not start with a local header")
        with zipfile.ZipFile(f) as z:
            root, by_name = zip_records(z, "torch.save")
            if root + "constants.pkl" in by_name:
                raise Unsupported("a TorchScript archive")  # torch.load hands these to torch.jit.load
            if root + "byteorder" in by_name and z.read(root + "byteorder") != b"little":
                raise Unsupported("a big-endian file")
            pkl = by_name.get(root + "data.pkl")
            if pkl is None or pkl.compress_type != zipfile.ZIP_STORED:
                raise Unsupported("no stored data.pkl")
            data = z.read(pkl)
    return ListingUnpickler(io.BytesIO(data), report=report, storages=_ZipStorages(by_name, root)).load()


def _list_legacy(path: Path, report: PickleReport) -> Any:
    storages = _LegacyStorages()
    size = path.stat().st_size
    with open(path, "rb") as raw:
        f = _BoundedFile(raw, size)

        def load() -> Any:
            return ListingUnpickler(f, report=report, storages=storages).load()

        for expected in (LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION):
            found = load()
            if type(found) is not int or found != expected:
                raise Unsupported("not a legacy torch file (or a damaged one: torch's error to give)")
        load()  # sys_info: torch reads it and does not use it
        obj = load()
        storages.verify(raw, load(), size)
    return obj
