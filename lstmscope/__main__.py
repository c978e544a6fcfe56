"""`python -m lstmscope`."""

from lstmscope.cli import app

if __name__ == "__main__":  # pragma: no cover - exercised through subprocess tests
    app(prog_name="lstmscope")
