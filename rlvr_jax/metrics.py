"""Metrics: JSONL and TensorBoard files in the workdir, optional W&B, console.

`<workdir>/metrics.jsonl` holds one JSON object per logged step, with a
`step` key and flat slash-separated names (`reward/mean`, `loss/kl`,
`train_acc/124`, `eval/math500/acc`, `time/sample_s`, ...). TensorBoard
events go to `<workdir>/tensorboard` through tensorboardX (no TensorFlow).

The workdir may be local or remote (gs://...; files go through `rlvr_jax.io`).
Object stores cannot append, so for a remote workdir the JSONL is rewritten
whole at each step (it is small), and the TensorBoard events are written to a
local directory that is printed.

`<workdir>/samples.jsonl` (`SamplesWriter`, with `log.samples_every`) keeps
a few decoded training responses with their grades, for reading later.
`<workdir>/response_lengths.jsonl` (`LengthsWriter`) keeps every training
response's length, one row per step: the planner prices a step at a run's
own lengths from it (`python -m rlvr_jax.plan --lengths=<workdir>`).

A resumed run first drops every logged row after the restored step, so the
files read as if the run had never been interrupted. Only process 0 writes.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping

import jax
from etils import epath

from rlvr_jax import io as io_lib


def quiet_library_logs() -> None:
    """Library logs (orbax, TFDS, absl) at WARNING unless `--verbosity` is given.

    Orbax logs every save and restore phase at INFO; the console is for the
    program's own progress lines. Call from an absl `main` (flags parsed).
    """
    from absl import flags, logging

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def _scalar(value):
    value = float(value)
    return value if math.isfinite(value) else str(value)


class MetricsWriter:
    """Writes scalar metrics per step to JSONL, TensorBoard and W&B."""

    def __init__(
        self,
        workdir: str,
        *,
        resume_step: int | None = None,
        tensorboard: bool = True,
        wandb_project: str = "",
        run_config: Mapping | None = None,
    ):
        self.enabled = jax.process_index() == 0
        self.path = epath.Path(workdir) / io_lib.METRICS_FILE
        self._remote = io_lib.is_remote(workdir)
        self._tb = None
        self._wandb = None
        self._file = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A resumed run drops rows past its checkpoint; a fresh one starts empty.
        keep_until = -1 if resume_step is None else resume_step
        self._rows = [
            r for r in io_lib.read_log(self.path) if r.get("step", -1) <= keep_until
        ]
        io_lib.write_jsonl(self.path, self._rows)
        if not self._remote:
            self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter

            logdir = str(epath.Path(workdir) / io_lib.TENSORBOARD_DIR)
            if self._remote:
                digest = hashlib.sha1(str(workdir).encode()).hexdigest()[:12]
                logdir = os.path.join(tempfile.gettempdir(), "rlvr_jax_tb", digest)
                print(f"TensorBoard events for {workdir} go to {logdir}", flush=True)
            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(logdir, purge_step=purge)
        if wandb_project:
            try:
                import wandb
            except ImportError:
                print("wandb is not installed; W&B logging is off", file=sys.stderr)
            else:
                self._wandb = wandb.init(
                    project=wandb_project,
                    dir=workdir,
                    config=dict(run_config or {}),
                    resume="allow",
                )

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
        self._rows.append(row)
        if self._file is not None:
            self._file.write(io_lib.jsonl_text([row]))
            self._file.flush()
        else:
            io_lib.write_jsonl(self.path, self._rows)
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, float):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(row, step=step)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


SAMPLES_FILE = "samples.jsonl"  # decoded training responses (`SamplesWriter`)


class SamplesWriter:
    """Every `every` steps, `count` decoded training responses with their
    grades, one JSON object a line in `<workdir>/samples.jsonl`.

    A row: step, row (the response's row in the step), index (the example's
    `extra_info.index`), response, answer (extracted), reward, correct,
    well_formed, length (tokens), finish_reason ("stop" or "length"). The rows
    are spread evenly over the step's responses, so they cover its groups.
    The file is kept as `MetricsWriter` keeps metrics.jsonl: a resumed
    run first drops the rows after its restored step (so a replayed step is
    not written twice), and a remote file is rewritten whole (atomically). A
    local file is appended to, each step's rows at once: a crash can cut only
    the last line, which `io.read_log` drops and a resumed run's rewrite
    removes. Process 0 only.
    """

    def __init__(self, workdir: str, every: int, count: int, resume_step):
        self.every, self.count = every, count
        self.enabled = every > 0 and jax.process_index() == 0
        self.path = epath.Path(workdir) / SAMPLES_FILE
        self._remote = io_lib.is_remote(workdir)
        if not self.enabled:
            return
        self._rows = _restart_log(self.path, resume_step, self._remote)

    def write(self, step: int, texts, roll, scored, examples, n: int) -> None:
        if not self.enabled or step % self.every:
            return
        total, reasons = len(texts), roll.finish_reason
        picked = sorted({k * total // self.count for k in range(self.count)})
        rows = [
            {
                "step": int(step),
                "row": i,
                "index": int(examples[i // n].index),
                "response": texts[i],
                "answer": scored.extracted[i],
                "reward": float(scored.rewards[i]),
                "correct": bool(scored.correct[i]),
                "well_formed": bool(scored.well_formed[i]),
                "length": int(roll.lengths[i]),
                "finish_reason": reasons[i],
            }
            for i in picked
        ]
        _append_log(self.path, self._rows, rows, self._remote)


def _restart_log(path, resume_step: int | None, remote: bool) -> list[dict]:
    """Opens a step log for a (re)started run: drops the rows after the
    restored step (a replayed step is not written twice; a fresh run starts
    empty) and rewrites the file. Returns the rows to keep in memory: all of
    them for a remote file (rewritten whole on each write), none for a local
    one (appended from here on)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    keep_until = -1 if resume_step is None else resume_step
    rows = [r for r in io_lib.read_log(path) if r.get("step", -1) <= keep_until]
    io_lib.write_jsonl(path, rows)
    return rows if remote else []


def _append_log(path, kept: list[dict], rows: list[dict], remote: bool) -> None:
    """Adds `rows` to a step log: a line at a time to a local file (a crash
    can cut only the last line, which `io.read_log` drops), the whole file
    rewritten on an object store (which cannot append)."""
    if remote:
        kept.extend(rows)
        io_lib.write_jsonl(path, kept)
        return
    with path.open("a", encoding="utf-8") as f:
        f.write(io_lib.jsonl_text(rows))


LENGTHS_FILE = "response_lengths.jsonl"  # every response's length (`LengthsWriter`)


class LengthsWriter:
    """Every step's response lengths, one JSON object a line in
    `<workdir>/response_lengths.jsonl`: {"step": s, "n": samples per prompt,
    "lengths": [tokens of row 0, 1, ...]} (rows prompt-major: row i*n + j is
    sample j of prompt i, so each n form a prompt's group).

    Kept as `SamplesWriter` keeps samples.jsonl: a resumed run first drops
    the rows after its restored step (a replayed step is not written twice);
    a local file is appended to a line at a time (a crash can cut only the
    last line, which `io.read_log` drops and a resumed run's rewrite
    removes); a remote one is rewritten whole. Process 0 only.
    """

    def __init__(self, workdir: str, resume_step: int | None = None):
        self.enabled = jax.process_index() == 0
        self.path = epath.Path(workdir) / LENGTHS_FILE
        self._remote = io_lib.is_remote(workdir)
        if not self.enabled:
            return
        self._rows = _restart_log(self.path, resume_step, self._remote)

    def write(self, step: int, lengths, n: int) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "n": int(n), "lengths": [int(x) for x in lengths]}
        _append_log(self.path, self._rows, [row], self._remote)


class Progress:
    """A one-line console progress display with the key numbers of a step."""

    KEYS = (
        ("reward/mean", "reward"),
        ("response_len/mean", "len"),
        ("loss/entropy", "ent"),
        ("loss/kl", "kl"),
        ("grad_norm", "gnorm"),
        ("time/step_s", "s/step"),
    )

    def __init__(self, total: int, start: int = 0):
        self.total, self.start = total, start
        self._t0 = time.time()
        self.enabled = jax.process_index() == 0

    def update(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        done = step - self.start
        rate = done / max(time.time() - self._t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        parts = [f"step {step}/{self.total}"]
        parts += [
            f"{short} {float(metrics[k]):.4g}" for k, short in self.KEYS if k in metrics
        ]
        if metrics.get("skipped_updates"):  # non-finite updates, when any
            parts.append(f"skipped {int(metrics['skipped_updates'])}")
        parts += [  # evaluation steps also show their accuracy
            f"{k[len('eval/') : -len('/acc')]} acc {float(v):.4g}"
            for k, v in metrics.items()
            if k.startswith("eval/") and k.endswith("/acc")
        ]
        parts.append(f"eta {eta / 60:.1f} min" if math.isfinite(eta) else "eta ?")
        print(" | ".join(parts), flush=True)
