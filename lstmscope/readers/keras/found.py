"""What the walks over a Keras file find: LSTM layers and their directions' weights; the error they raise."""

from __future__ import annotations

from dataclasses import dataclass, field

from lstmscope.masking import MaskRule
from lstmscope.spec import Activation
from lstmscope.tokens import EmbeddingRef

MAX_DEPTH, MAX_OBJECTS = 64, 200_000  # nesting and size limits for configs and HDF5 trees


@dataclass
class _Dir:
    """One direction of one layer: its weight datasets in the file's own layout."""

    kind: str  # "keras" (kernel, recurrent_kernel[, bias]), "cudnn" (bias 8H, raw cuDNN blocks), "keras1" (12 arrays)
    paths: list[str]  # dataset paths as shown (Windows backslashes made '/'), in weight order
    h5names: list[str]  # the same datasets' HDF5 names, to read them by
    shapes: list[tuple[int, ...]]
    dtype: str
    input_size: int
    units: int


@dataclass
class _Layer:
    """One LSTM layer (or Bidirectional(LSTM)) as the file describes it."""

    name: str  # the Keras layer name
    where: tuple[str, ...]  # names of the submodels around it, outermost first
    dirs: list[_Dir]  # forward[, backward]
    activation: Activation
    recurrent: Activation
    use_bias: bool
    go_backwards: bool = False
    return_sequences: bool | None = None  # None: unknown (no config)
    merge_mode: str | None = "concat"  # Bidirectional only
    wrapper: str | None = None  # "TimeDistributed" when wrapped
    notes: list[str] = field(default_factory=list)
    feeder: str | None = None  # the layer whose output it takes (identity layers skipped), same container
    masked_by: str | None = None
    mask_rule: MaskRule | None = None  # the mask Keras computes for its input, when a Masking/Embedding makes it
    embedding: EmbeddingRef | None = None  # the Embedding layer feeding it (identity layers skipped)
    container: int = 0  # which container it sits in (layers chain only within one)

    @property
    def units(self) -> int:
        return self.dirs[0].units

    @property
    def input_size(self) -> int:
        return self.dirs[0].input_size

    @property
    def bidirectional(self) -> bool:
        return len(self.dirs) == 2

    @property
    def bias_layout(self) -> str:
        return "ih+hh" if self.dirs[0].kind == "cudnn" else "single"


class _Refused(Exception):
    """Raised inside the reader with a message; read() adds the file's path."""


def _fail(message: str):
    raise _Refused(message)
