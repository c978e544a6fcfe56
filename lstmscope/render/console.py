"""The Rich console stdout gets: a terminal's width and colours, or, in a pipe, plain lines.

* On a terminal (as Rich decides: a tty, or ``TTY_COMPATIBLE=1``, or ``FORCE_COLOR``): Rich's own console (its
  width, ``$COLUMNS`` when set; its colours), with ``NO_COLOR`` (any non-empty value) meaning no escape codes at
  all: no colour, and no bold or dim either.
* In a pipe or a file: no escape codes, no wrapping (a line is as long as its content: paths and tuples are never
  broken mid-name) and no trailing spaces (tables pad their cells; the padding at the end of a line is cut).
  What has to fit a width (heatmaps pooled to it, a table laid out for a screen) uses ``$COLUMNS`` or 80.
"""

from __future__ import annotations

import io
import os
import sys

from rich.console import Console

PIPE_WIDTH = 100_000  # a pipe's console width: wide enough that nothing wraps
DEFAULT_LAYOUT_WIDTH = 80


class _Unpadded(io.TextIOBase):
    """A text stream that passes lines on without their trailing spaces."""

    def __init__(self, out):
        self.out = out
        self.pending = ""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        text = self.pending + s
        lines = text.split("\n")
        self.pending = lines.pop()
        if lines:
            self.out.write("\n".join(line.rstrip(" ") for line in lines) + "\n")
        return len(s)

    def flush(self) -> None:
        if self.pending:
            self.out.write(self.pending.rstrip(" "))
            self.pending = ""
        self.out.flush()


def no_color() -> bool:
    return bool(os.environ.get("NO_COLOR"))


def stdout_console(file=None) -> Console:
    """The console results are printed on (``file``: stdout)."""
    out = sys.stdout if file is None else file
    console = Console(file=out, highlight=False, color_system=None if no_color() else "auto")
    if console.is_terminal:  # a terminal (or TTY_COMPATIBLE=1 / FORCE_COLOR, Rich's conventions)
        console.layout_width = console.width
        return console
    console = Console(file=_Unpadded(out), width=PIPE_WIDTH, soft_wrap=True, color_system=None, highlight=False,
                      force_terminal=False)
    console.layout_width = _columns()
    return console


def _columns() -> int:
    try:
        return max(20, int(os.environ.get("COLUMNS", "")))
    except ValueError:
        return DEFAULT_LAYOUT_WIDTH


def layout_width(console: Console) -> int:
    """The width things drawn to fit the screen use: the terminal's, or ``$COLUMNS``/80 in a pipe."""
    return getattr(console, "layout_width", console.width)


def is_pipe(console: Console) -> bool:
    return console.width >= PIPE_WIDTH


FOLD_MIN = 12  # a text column is allowed to fold down to this width before a table is stacked instead


def _plain(cell) -> str:
    from rich.text import Text

    if isinstance(cell, Text):
        return cell.plain
    return str(cell) if cell is not None else ""


def _atomic(cell: str) -> bool:
    """A cell that must not be broken: one token (a number, a name, a position), or one tuple or list."""
    c = cell.strip()
    if "\n" in c:
        return False
    if " " not in c:
        return True
    return (c[:1], c[-1:]) in (("(", ")"), ("[", "]")) and c.count("(") + c.count("[") == 1


def print_table(console: Console, table) -> None:
    """Print a Rich table so that every number stays whole: the title on a line of its own; columns whose cells
    are single tokens (numbers, names, positions) never wrap; text columns fold. When even so the table is
    wider than the console, it is stacked: one block of ``header value`` pairs per row, wrapped between pairs."""
    if table.title:  # on a line of its own, wrapped at the console's width, not the table's
        from rich.text import Text

        title = table.title
        print_note(console, title if isinstance(title, Text) else Text(str(title), style=table.title_style or "bold"),
                   indent=0)
        table.title = None
    columns = table.columns
    for col in columns:
        cells = [_plain(c) for c in col._cells]
        if cells and all(_atomic(c) for c in cells):
            col.no_wrap = True
        elif not col.no_wrap:
            col.overflow = "fold"
    if is_pipe(console):
        console.print(table)
        return
    tight = (0, 1, 0, 0) if table.box is None else (0, 0)  # one space between columns (a box draws its own)
    for padding in (None, tight):  # as laid out; then one space between columns; then stacked
        if padding is not None:
            table.padding = padding
        if _min_width(console, table) <= console.width:
            console.print(table)
            return
    _print_stacked(console, table)


def _min_width(console: Console, table) -> int:
    """The narrowest the table can be with its single-token columns whole and its text columns folded to
    FOLD_MIN."""
    from rich.measure import Measurement

    natural = Measurement.get(console, console.options.update_width(PIPE_WIDTH), table).maximum
    full, least = 0, 0
    for col in table.columns:
        texts = [_plain(col.header)] + [_plain(c) for c in col._cells]
        w = max((len(line) for t in texts for line in t.split("\n")), default=0)
        full += w
        least += w if col.no_wrap else min(w, FOLD_MIN)
    return natural - full + least


def _print_stacked(console: Console, table) -> None:
    from rich.text import Text

    width = console.width
    headers = [_plain(c.header) for c in table.columns]
    rows = table.row_count
    cells = [[_plain(c._cells[r]) if r < len(c._cells) else "" for c in table.columns] for r in range(rows)]
    for r in range(rows):
        pairs = [f"{h}: {v}" if h else v for h, v in zip(headers, cells[r]) if v.strip()]
        # a row that leaves its first cell blank continues the row above (c_n under h_n): indented under it
        lead = "  " if r and not cells[r][0].strip() and not table.rows[r - 1].end_section else ""
        line = ""
        for p in pairs:
            p = " ".join(p.split())
            if line and len(line) + 2 + len(p) > width:
                console.print(Text(line), soft_wrap=True)
                line = lead + "  " + p
            else:
                line = lead + p if not line else f"{line}  {p}"
        if line:
            console.print(Text(line), soft_wrap=True)
        if table.rows[r].end_section and r != rows - 1:
            console.print()
    console.print()  # as a table's own bottom margin: a heading or verdict after it stands apart


ATOM_MAX = 24  # a group longer than this may break inside, between its own top-level parts,
TUPLE_MAX = 40  # unless it is a tuple (spaces only after commas) of at most this: (layers*directions, batch, ...)


def _atoms(text: str, top: int = 0) -> list[str]:
    """Words of ``text``, a parenthesised or bracketed group or a quoted name counted as one word, so a line
    break never falls inside ``(1, 3, 8)``, ``y[:, -1]`` or ``'/lstm/Slice_output_0'``. A group longer than
    ATOM_MAX breaks between its own parts (its inner groups stay whole). ``top``: the bracket depth breaks are
    allowed at (0: outside every group)."""
    out: list[str] = []
    depth, quote = 0, False
    # quotes pair up, or none is taken for one: an apostrophe at a word's edge (layers', 'h0's) opens nothing
    quotes = _quotes_pair(text)
    for word in text.split(" "):
        if out and (depth > top or quote):
            out[-1] += " " + word
        else:
            out.append(word)
        for i, ch in enumerate(word):
            if ch in "([":
                depth += 1
            elif ch in ")]" and depth > 0:
                depth -= 1
            elif ch == "'" and quotes and not _inside_word(word, i):  # a quote, not the apostrophe of "layer's"
                quote = not quote
    if top == 0:
        split: list[str] = []
        for atom in out:
            whole = len(atom) <= ATOM_MAX or (len(atom) <= TUPLE_MAX and _tuple_like(atom))
            split += _atoms(atom, 1) if not whole and " " in atom and atom[:1] in "([" else [atom]
        return split
    return out


def _tuple_like(group: str) -> bool:
    """``(a, b, c)``: every space follows a comma (prose in parentheses has other spaces)."""
    return all(group[k - 1] == "," for k, ch in enumerate(group) if ch == " ")


def _quotes_pair(text: str) -> bool:
    return sum(ch == "'" and not _inside_word(w, i) for w in text.split(" ") for i, ch in enumerate(w)) % 2 == 0


def _inside_word(word: str, i: int) -> bool:
    return 0 < i < len(word) - 1 and word[i - 1].isalnum() and word[i + 1].isalnum()


def wrap_atomic(text: str, width: int) -> list[str]:
    """``text`` broken into lines of at most ``width`` between atoms (an atom wider than that is folded)."""
    lines: list[str] = []
    line = ""
    for atom in _atoms(text):
        if line and len(line) + 1 + len(atom) > width:
            lines.append(line.rstrip())
            line = atom
        else:
            line = atom if not line else f"{line} {atom}"
        while len(line) > width:  # one atom wider than the console (a long path): folded, as Rich folds it
            lines.append(line[:width])
            line = line[width:]
    if line or not lines:
        lines.append(line)
    return lines


def print_note(console: Console, text, *, indent: int = 2, style: str = "dim") -> None:
    """One note (a str, or a Rich Text whose style is kept per line), wrapped to the console's width without
    breaking groups (see _atoms); in a pipe, one line."""
    from rich.text import Text

    t = text if isinstance(text, Text) else Text(text, style=style)
    if is_pipe(console):
        console.print(Text(" " * indent) + t, soft_wrap=True)
        return
    plain, pos = t.plain, 0
    for line in wrap_atomic(plain, max(10, console.width - indent)):
        at = plain.find(line, pos)
        piece = t[at:at + len(line)] if at >= 0 else Text(line, style=style)
        pos = at + len(line) if at >= 0 else pos
        console.print(Text(" " * indent) + piece, soft_wrap=True)
