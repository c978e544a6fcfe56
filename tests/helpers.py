"""Assertions shared by the CLI tests."""

from __future__ import annotations


def assert_one_error_line(result, path, *fragments, code: int = 2) -> str:
    """Exit ``code``, nothing on stdout, exactly one ``Error: `` line on stderr that names the file ``path``
    (None: an error about options, which names no file) and holds every fragment. Returns the line with the
    file's path and name replaced by <FILE>, and checks fragments there, so words in tmp_path's test-named
    folders cannot satisfy them."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("Error: "), line
    assert "Traceback" not in result.stderr
    assert "internal error" not in line, line
    if path is None:
        rest = line
    else:
        assert path.name in line, (path.name, line)
        rest = line.replace(str(path), "<FILE>").replace(path.name, "<FILE>")
    for frag in fragments:
        assert str(frag) in rest, (frag, line)
    return rest


def assert_rows_name_their_slices(doc: dict, file_a, file_b, expected: set[str]) -> None:
    """Every h_n/c_n row of a ``diff-states --json`` document names, in ``stored_as``, where the two files keep
    that slice (``name``, ``name[1]`` or ``name[:, 1]``), and its max |a - b| is that place's, read from the files
    themselves with numpy (float64). ``expected``: the names the rows must give, together."""
    import re

    import numpy as np

    def load(path):
        path = str(path)
        if path.endswith(".npz"):
            with np.load(path) as z:
                return {k: z[k] for k in z.files}
        from safetensors.numpy import load_file

        return load_file(path)

    a, b = load(file_a), load(file_b)
    rows = [r for r in doc["rows"] if r["tensor"] in ("h_n", "c_n")]
    assert {r["stored_as"] for r in rows} == expected, [r.get("stored_as") for r in rows]
    for r in rows:
        m = re.fullmatch(r"(.+?)(?:\[((?::, )*)(\d+)\])?", r["stored_as"])
        name, lead, at = m.group(1), m.group(2), m.group(3)
        index = () if at is None else (slice(None),) * lead.count(":") + (int(at),)
        x, y = (np.asarray(t[name], dtype=np.float64)[index] for t in (a, b))
        assert x.shape == tuple(r["shape"]), (r, x.shape)
        assert r["max_abs_diff"] == float(np.abs(x - y).max()), (r["stored_as"], r["max_abs_diff"])
