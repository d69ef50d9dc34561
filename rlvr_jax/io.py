"""File plumbing without JAX: atomic writes, JSONL, the workdir's file names.

Paths may be local or remote (`gs://...`): files go through `etils.epath`, the
I/O layer orbax uses, so a workdir on an object store works like a local one.

JSONL, as every reader here treats it:
  - one JSON object per line; blank lines are skipped;
  - a line that is not valid JSON, or valid JSON that is not an object, is an
    error naming `path:line` (`JsonlError`, a ValueError);
  - a missing file is a FileNotFoundError, except for `read_log`;
  - `read_log` is for files appended to line by line (metrics.jsonl): a
    missing file is empty, and a last line that has no newline and does not
    parse is a write cut short by a crash, so it is dropped. A cut can only
    happen there: every writer ends each row with a newline.

Whole files are written atomically (`write_atomic`, `write_jsonl`): a reader
sees the old file or the new one, never part of one, and a failed write
leaves no temporary file behind. `describe_os_error` turns a failed file
operation into the one line a console shows (`<path>: no space left on
device`).

This module is named `io` inside the package; the stdlib `io` stays reachable
because imports are absolute. Import it as `from rlvr_jax import io as io_lib`
so that a module can use both.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterable

from etils import epath

# ----------------------------------------------------------- workdir files
METRICS_FILE = "metrics.jsonl"  # one row per logged step (`metrics.MetricsWriter`)
HISTORY_FILE = "accuracy_history.json"  # {example index: [accuracy per epoch]}
CONFIG_FILE = "run_config.json"  # not config.json: that marks a HF model dir
TENSORBOARD_DIR = "tensorboard"
EVAL_DIR = "eval"  # `<workdir>/eval/<model tag>/` per evaluated model
RESULTS_FILE = "results.json"  # one evaluated model's results (the "done" marker)


class JsonlError(ValueError):
    """A JSONL line that is not a JSON object; the message names `path:line`."""


def is_remote(path) -> bool:
    """Whether `path` is on an object store (`gs://...`), where files cannot
    be appended to."""
    return "://" in str(path)


# ------------------------------------------------------------------ writes
def write_atomic(path, data: str | bytes) -> None:
    """Writes a whole file (text as UTF-8, or bytes) so that readers never see
    a partial one; creates the parent directory.

    The data goes to `<path>.tmp<pid>` first and is renamed over `path`. When
    the write or the rename fails (a full disk, a read-only mount) the
    temporary file is removed before the error is re-raised: a failed write
    leaves the directory as it was, not littered with partial files.
    """
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{path.name}.tmp{os.getpid()}"
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
        tmp.replace(path)  # atomic on POSIX; a single object write on gs://
    except BaseException:
        # Also on KeyboardInterrupt: a half-written file is never useful.
        # The original error matters more than a failed clean-up.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


# The causes a user can act on, in plain words; other errors use strerror.
_OS_ERROR_CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
}


def describe_os_error(e: OSError) -> str:
    """One line naming the path of a failed file operation and its cause.

    For a console `error:` line: `<path>: no space left on device` rather
    than a traceback. ENOSPC, EDQUOT, EACCES/EPERM and EROFS get a fixed
    phrase; other errors their strerror ("no such file or directory"); an
    error without an errno its message. The path is `e.filename` (and
    `e.filename2` for a rename); an error without one is described by its
    cause alone.
    """
    cause = _OS_ERROR_CAUSES.get(e.errno) if e.errno is not None else None
    if cause is None and e.strerror:
        cause = e.strerror[:1].lower() + e.strerror[1:]
    if cause is None:
        cause = str(e) or type(e).__name__
    paths = [str(f) for f in (e.filename, e.filename2) if f is not None]
    line = f"{' -> '.join(paths)}: {cause}" if paths else cause
    return " ".join(line.split())  # one line, whatever the message held


def jsonl_text(rows: Iterable[dict]) -> str:
    """Rows as JSONL text: one object a line, each line ending in a newline."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_jsonl(path, rows: Iterable[dict]) -> None:
    """Writes `rows` as a JSONL file, atomically."""
    write_atomic(path, jsonl_text(rows))


# ------------------------------------------------------------------- reads
def read_jsonl(path) -> list[dict]:
    """The rows of a JSONL file (module docstring: blank lines, errors)."""
    return [row for row, _ in read_jsonl_located(path)]


def read_jsonl_located(path) -> list[tuple[dict, str]]:
    """(row, "path:line") pairs of a JSONL file, for callers that report a
    problem with a row where it is."""
    return list(_rows(epath.Path(path), cut_tail_ok=False))


def read_log(path) -> list[dict]:
    """The rows of an appended-to JSONL log; [] when it does not exist.

    A last line cut short by a crash is dropped (module docstring).
    """
    path = epath.Path(path)
    if not path.exists():
        return []
    return [row for row, _ in _rows(path, cut_tail_ok=True)]


def _rows(path: epath.Path, cut_tail_ok: bool):
    with path.open("r", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                if cut_tail_ok and not line.endswith("\n"):
                    return  # the last line (it has no newline), cut by a crash
                raise JsonlError(f"{where}: malformed JSON ({e})") from e
            if not isinstance(row, dict):
                raise JsonlError(f"{where}: not a JSON object ({type(row).__name__})")
            yield row, where


@contextlib.contextmanager
def local_dir(out):
    """A local directory whose files end up in `out` (local or gs://).

    safetensors and tokenizers only write local files: for a remote `out`
    they are staged in a temporary directory and copied.
    """
    out = epath.Path(out)
    if not is_remote(out):
        out.mkdir(parents=True, exist_ok=True)
        yield str(out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield tmp
        out.mkdir(parents=True, exist_ok=True)
        for name in os.listdir(tmp):
            epath.Path(tmp, name).copy(out / name, overwrite=True)
