"""The one JSONL reader: a bad line is refused by file and line, or skipped and counted where the file can be redone."""

import pytest


def test_one_jsonl_reader_refuses_a_bad_line_by_name_or_skips_and_counts_it(tmp_path, capsys):
    from moviechat.common.errors import DataError
    from moviechat.common.jsonl import read_jsonl

    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\nnot json\n[1]\n{"b": 2}\n{"a": 3}\n{"cut')
    with pytest.raises(DataError, match=f"{path}: line 3: not JSON"):
        read_jsonl(path)
    assert read_jsonl(path, skip_bad=True) == [{"a": 1}, {"b": 2}, {"a": 3}]
    out = capsys.readouterr().out
    assert "its last line was cut off mid-write" in out and "2 unusable line(s) skipped (lines 3, 4)" in out
    no_b = lambda row: "no 'a'" if "a" not in row else None  # noqa: E731
    assert read_jsonl(path, skip_bad=True, check=no_b) == [{"a": 1}, {"a": 3}]
    path.write_text('{"a": 1}\n{"b": 2}\n{"cut')
    with pytest.raises(DataError, match=r"line 2: no 'a' \(fix it\)"):
        read_jsonl(path, check=no_b, hint="fix it")
    path.write_text('{"a": 1}\n{"cut')
    with pytest.raises(DataError, match=r"line 2: not JSON .*\(the last line, cut off mid-write\?\)"):
        read_jsonl(path)
