"""What the front ends (the CLI and lstmscope.api) parse from option text before the core sees it.

``--units 0:8``, ``--units -4:``, ``--steps 3`` become a :data:`Span`: the core resolves it against the width or
length it turns out to have (lstmscope.report.resolve_span), and never reads option text itself.
"""

from __future__ import annotations

from lstmscope.errors import UsageError

Span = tuple  # (start | None, stop | None, text): a Python slice's bounds (negative: from the end), and the text


def parse_span(text: str | None, flag: str) -> Span | None:
    """``A:B`` (B exclusive, either side optional, negative counts from the end) or ``A`` (one index; ``-1`` the
    last) -> a Span; None -> None. Only the syntax is checked here."""
    if text is None:
        return None
    if isinstance(text, tuple):  # already parsed (the API passes spans through)
        return text
    try:
        if ":" in text:
            a, _, b = text.partition(":")
            return (int(a) if a.strip() else None, int(b) if b.strip() else None, text)
        lo = int(text)
        return (lo, lo + 1 if lo != -1 else None, text)
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not a range; give A:B (B exclusive, e.g. {flag} 0:8) or one index A")
