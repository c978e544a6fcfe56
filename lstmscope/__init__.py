"""lstmscope: look inside LSTM state.

The package root imports nothing heavy: ``import lstmscope`` must stay cheap so
that ``lstmscope --help`` and the torch-free commands start fast.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
