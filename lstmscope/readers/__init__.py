"""Checkpoint readers, one module per file family."""

from lstmscope.readers.torch import Checkpoint, read_checkpoint  # noqa: F401
