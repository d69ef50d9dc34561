"""rlvr_jax.io: atomic writes (and their clean failure), the one JSONL
behaviour, OS errors as one line, and JAX-free imports."""

import errno
import json
import subprocess
import sys

import pytest

from rlvr_jax import io as io_lib


def test_write_atomic_text_and_bytes_leave_no_temporary_file(tmp_path):
    path = tmp_path / "new" / "dir" / "f.txt"  # parents are created
    io_lib.write_atomic(str(path), "héllo\n")
    assert path.read_text(encoding="utf-8") == "héllo\n"
    io_lib.write_atomic(path, b"\x00\xffbytes")  # an os.PathLike works too
    assert path.read_bytes() == b"\x00\xffbytes"
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.txt"]


def test_jsonl_round_trip_keeps_unicode_and_order(tmp_path):
    rows = [{"step": 2, "text": "√2 ≈ 1.414"}, {"step": 1, "nested": {"a": [1]}}]
    path = tmp_path / "rows.jsonl"
    io_lib.write_jsonl(str(path), rows)
    assert path.read_text(encoding="utf-8").count("\n") == 2
    assert "√2" in path.read_text(encoding="utf-8")  # UTF-8, not \u escapes
    assert io_lib.read_jsonl(str(path)) == rows
    assert io_lib.read_jsonl_located(str(path)) == [
        (rows[0], f"{path}:1"),
        (rows[1], f"{path}:2"),
    ]


def test_blank_lines_are_skipped_and_locations_count_them(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('\n{"a": 1}\n   \n\n{"a": 2}\n\n')
    assert io_lib.read_jsonl_located(str(path)) == [
        ({"a": 1}, f"{path}:2"),
        ({"a": 2}, f"{path}:5"),
    ]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert io_lib.read_jsonl(str(empty)) == []


@pytest.mark.parametrize(
    "text, line, what",
    [
        ('{"a": 1}\n{oops\n{"a": 2}\n', 2, "malformed JSON"),
        ('{"a": 1}\n[1, 2]\n', 2, "not a JSON object"),
        ('"text"\n', 1, "not a JSON object"),
        # Input files are read strictly: a cut last line is an error there.
        ('{"a": 1}\n{"a": ', 2, "malformed JSON"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, text, line, what):
    path = tmp_path / "rows.jsonl"
    path.write_text(text)
    with pytest.raises(io_lib.JsonlError, match=f"{path}:{line}: {what}"):
        io_lib.read_jsonl(str(path))
    assert issubclass(io_lib.JsonlError, ValueError)


def test_missing_file_raises_except_for_a_log(tmp_path):
    with pytest.raises(FileNotFoundError):
        io_lib.read_jsonl(str(tmp_path / "none.jsonl"))
    assert io_lib.read_log(str(tmp_path / "none.jsonl")) == []


def test_log_drops_only_a_last_line_cut_by_a_crash(tmp_path):
    rows = [{"step": 0, "x": 1.0}, {"step": 1, "x": 2.0}]
    path = tmp_path / io_lib.METRICS_FILE
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 2, "x')
    assert io_lib.read_log(str(path)) == rows
    # A last row written whole but without its newline is kept.
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1]))
    assert io_lib.read_log(str(path)) == rows
    # A malformed line that ends in a newline was not cut by a crash.
    path.write_text('{"step": 0}\n{"step": 1, "x\n{"step": 2}\n')
    with pytest.raises(io_lib.JsonlError, match=f"{path}:2: malformed JSON"):
        io_lib.read_log(str(path))


def test_results_plot_and_checker_import_no_jax():
    code = (
        "import sys\n"
        "import rlvr_jax.evaluation.results, rlvr_jax.plot, rlvr_jax.checker, rlvr_jax.io\n"
        "import rlvr_jax.data.tasks  # evaluation tasks load before any model\n"
        "print(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'jax', 'jaxlib', 'flax'}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip() == "[]", proc.stdout


@pytest.mark.parametrize("step", ["write", "rename"])
def test_a_failed_write_atomic_removes_its_temporary_file_and_reraises(
    tmp_path, monkeypatch, step
):
    from etils import epath

    path = tmp_path / "f.json"
    path.write_text("old")
    path_type = type(epath.Path(tmp_path))
    original = path_type.write_text

    def half_then_full(self, data, *args, **kwargs):  # the disk fills mid-write
        original(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    def refused(self, target):
        raise OSError(errno.EACCES, "Permission denied", str(self), None, str(target))

    if step == "write":
        monkeypatch.setattr(path_type, "write_text", half_then_full)
    else:
        monkeypatch.setattr(path_type, "replace", refused)
    with pytest.raises(OSError) as info:
        io_lib.write_atomic(path, "new contents")
    assert info.value.errno == (errno.ENOSPC if step == "write" else errno.EACCES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]  # no *.tmp*
    assert path.read_text() == "old"


@pytest.mark.parametrize(
    "error, line",
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "/w/m"),
            "/w/m: no space left on device",
        ),
        (
            PermissionError(errno.EACCES, "Permission denied", "/w"),
            "/w: permission denied",
        ),
        (
            OSError(errno.EPERM, "Operation not permitted", "/w"),
            "/w: permission denied",
        ),
        (
            OSError(errno.EROFS, "Read-only file system", "/w"),
            "/w: read-only file system",
        ),
        # Others by strerror; a rename names both paths; no path: the cause.
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory", "/x"),
            "/x: no such file or directory",
        ),
        (
            OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b"),
            "/a -> /b: invalid cross-device link",
        ),
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on device"),
        (OSError("disk\non fire"), "disk on fire"),
    ],
    ids=[
        "enospc",
        "eacces",
        "eperm",
        "erofs",
        "other",
        "rename",
        "no_path",
        "no_errno",
    ],
)
def test_describe_os_error_is_one_line_naming_path_and_cause(error, line):
    assert io_lib.describe_os_error(error) == line
