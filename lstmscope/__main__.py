"""`python -m lstmscope`."""

from lstmscope.cli import entry_point

if __name__ == "__main__":  # pragma: no cover - exercised through subprocess tests
    entry_point()
