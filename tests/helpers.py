"""Assertions shared by the CLI tests."""

from __future__ import annotations


def assert_one_error_line(result, path, *fragments, code: int = 2) -> str:
    """Exit ``code``, nothing on stdout, exactly one ``Error: `` line on stderr that names the file ``path``
    and holds every fragment. Returns the line with the file's path and name replaced by <FILE>, and
    checks fragments there, so words in tmp_path's test-named folders cannot satisfy them."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("Error: "), line
    assert "Traceback" not in result.stderr
    assert "internal error" not in line, line
    assert path.name in line, (path.name, line)
    rest = line.replace(str(path), "<FILE>").replace(path.name, "<FILE>")
    for frag in fragments:
        assert str(frag) in rest, (frag, line)
    return rest
