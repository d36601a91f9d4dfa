"""data_pipeline/jsonl.py and paths.atomic_output: one rule for a half-written tail, shared by every
reader of appended files (read_appended and eval.predictions.read_predictions), and whole-file writes
that leave the old file or the new one, never half of one."""
import logging
import os

import numpy as np
import pytest

from data_pipeline.jsonl import read_appended, scan_appended, write_jsonl, write_text
from data_pipeline.paths import atomic_output
from progress_jax.eval.predictions import PredictionError, read_predictions
from progress_jax.models import safetensors_io

A = '{"setting": "s", "id": "1", "stage": "a.jpg", "score": 0.5}'
B = '{"setting": "s", "id": "2", "stage": "b.jpg", "score": null}'


# (file text, lines kept, truncated line, line number of an error or None)
CASES = {
    "half-written tail": (f"{A}\n{B}\n" + '{"setting": "s", "id": "3", "sta', [1, 2], 3, None),
    "complete tail without newline": (f"{A}\n{B}", [1, 2], None, None),
    "bad UTF-8 in the tail": (f"{A}\n".encode() + b'{"setting": "\xff', [1], 2, None),
    "blank lines and a BOM": ("\ufeff" + f"{A}\n\n{B}\n\n", [1, 3], None, None),
    "bad line before the end": (f"{A}\n{{oops\n{B}\n", None, None, 2),
    "bad last line with its newline": (f"{A}\n{{oops\n", None, None, 2),
}


@pytest.mark.parametrize("name", list(CASES))
def test_one_rule_for_every_reader_of_appended_files(tmp_path, caplog, name):
    text, kept, truncated, bad = CASES[name]
    path = tmp_path / "p.jsonl"
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    with caplog.at_level(logging.WARNING):
        scan = scan_appended(path)
    assert scan.truncated_line == truncated
    assert (f"{path}:{truncated}: ignoring a truncated last line" in caplog.text) == (truncated is not None)
    if bad is not None:
        assert [e.number for e in scan.lines if e.error] == [bad]
        with pytest.raises(ValueError, match=f"{path}:{bad}: bad JSON"):
            read_appended(path)
        with pytest.raises(PredictionError, match=f"{path}:{bad}: bad JSON"):
            read_predictions(path)
        return
    assert [n for n, _ in read_appended(path)] == kept
    predictions = read_predictions(path)
    assert [n for n, _ in predictions.lines] == kept and predictions.truncated_line == truncated


def test_a_complete_tail_that_is_no_object_is_an_error_for_both(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(f"{A}\n5")  # decodes, so it is not a half-written line
    assert scan_appended(path).truncated_line is None
    with pytest.raises(ValueError, match=f"{path}:2: expected a JSON object, got int"):
        read_appended(path)
    with pytest.raises(PredictionError, match=f"{path}:2: expected a JSON object, got int"):
        read_predictions(path)


def test_missing_file(tmp_path):
    assert read_appended(tmp_path / "absent.jsonl", missing_ok=True) == []
    with pytest.raises(FileNotFoundError):
        read_appended(tmp_path / "absent.jsonl")


def _leftovers(directory):
    return sorted(n for n in os.listdir(directory) if ".tmp" in n)


def test_atomic_output_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    with atomic_output(path) as f:
        f.write("first\n")
    assert path.read_text() == "first\n"
    with pytest.raises(RuntimeError):
        with atomic_output(path) as f:
            f.write("half of the sec")
            raise RuntimeError("killed")
    assert path.read_text() == "first\n" and _leftovers(path.parent) == []
    with atomic_output(path, "wb") as f:
        f.write(b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01" and _leftovers(path.parent) == []


def test_write_text_and_write_jsonl(tmp_path):
    write_text(tmp_path / "a" / "t.txt", "é\n")
    assert (tmp_path / "a" / "t.txt").read_bytes() == "é\n".encode()
    write_jsonl(str(tmp_path / "a" / "x.jsonl"), [{"k": "é"}, {"k": 2}])
    assert (tmp_path / "a" / "x.jsonl").read_text(encoding="utf-8") == '{"k": "é"}\n{"k": 2}\n'
    assert _leftovers(tmp_path / "a") == []


def test_safetensors_save_file_is_read_by_the_safetensors_package(tmp_path):
    from safetensors.numpy import load_file

    path = tmp_path / "w.safetensors"
    tensors = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.array([1, -2], np.int64)}
    safetensors_io.save_file(tensors, str(path), {"format": "pt"})
    loaded = load_file(str(path))
    assert set(loaded) == {"a", "b"}
    for name, value in tensors.items():
        assert loaded[name].dtype == value.dtype
        np.testing.assert_array_equal(loaded[name], value)
    assert _leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="unsupported dtype"):
        safetensors_io.save_file({"c": np.array(["x"])}, str(path))
    np.testing.assert_array_equal(load_file(str(path))["b"], tensors["b"])  # the old file stands
