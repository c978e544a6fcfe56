"""lstmscope: look inside LSTM state.

On the command line: ``lstmscope --help``. In Python (notebooks)::

    import lstmscope
    r = lstmscope.run("model.pt", x)      # x: a path or a numpy array
    r.h_n, r.c_n, r.output, r.ok, r.to_dict()

``inspect``, ``run``, ``export_state``, ``trace``, ``diff`` and ``compare`` return the results the commands
render (see lstmscope.api). The package root imports nothing heavy: ``import lstmscope`` stays cheap, and the
API module (and torch, when something runs) is imported on first use.
"""

__version__ = "0.1.0"

_API = ("inspect", "run", "export_state", "trace", "diff", "compare", "InspectResult", "RunResult", "TraceResult",
        "DiffReport", "CompareReport")

__all__ = ["__version__", "LstmscopeError", *_API]


def __getattr__(name: str):
    if name in _API:
        from lstmscope import api

        return getattr(api, name)
    if name == "LstmscopeError":
        from lstmscope.errors import LstmscopeError

        return LstmscopeError
    raise AttributeError(f"module 'lstmscope' has no attribute {name!r}")
