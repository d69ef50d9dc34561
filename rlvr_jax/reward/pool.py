"""Batch scoring of responses in a pool of killable worker processes.

The training loop scores ~1024 responses per step. A grader can hang or blow
up memory on adversarial text, so scoring runs in worker processes that the
parent watches: every item has a deadline, and a worker that passes it is
killed (SIGKILL) and replaced; that item scores 0 and is counted as a timeout.
Nothing relies on SIGALRM or on the worker cooperating.

Workers are started with the "forkserver" method where available (else
"spawn"), never plain fork: the parent process runs JAX, whose threads make
fork unsafe. The fork server preloads `rlvr_jax.checker`, so a replacement
worker starts in milliseconds. As with any spawn/forkserver child, a worker
re-imports the parent's `__main__` module (guarded by `__name__`), so keep
heavy imports of an entry point inside functions.

Keep one `RewardPool` for the whole run; `score_batch` is a convenience wrapper
over a shared pool for scripts.

    with RewardPool(workers=8, timeout_s=5.0) as pool:
        result = pool.score(responses, ground_truths)
        result.rewards, result.timeouts, result.errors

`think=True` (per pool or per call) applies the think rule of reasoning
models (`checker.after_thinking`): the workers grade only the text after
`</think>`, and a response that never closes its thinking scores 0 without
being sent to a worker.

Reward kinds (`RewardKind`, per call): what a training response earns once it
is graded. "correct" is the verifiable reward; "format", "random" and
"correct_or_format" are the controls of Shao et al. 2025 ("Spurious
Rewards", arXiv 2506.10947; docs/recipe.md, "Controls"). Every kind grades
every response all the same, so a control run still reports which answers
were right (`ScoreResult.correct`) and well formed (`ScoreResult.well_formed`).
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from multiprocessing.connection import wait

from rlvr_jax.reward import checker

DEFAULT_TIMEOUT_S = 5.0
# Extracted answers sent back to the parent are cut to this many characters;
# they are for logging only.
MAX_EXTRACTED_CHARS = 1000


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    """The scores of one batch, in input order.

    Attributes:
      rewards: 1.0 or 0.0 per response.
      extracted: the extracted answer per response (None when there was none,
        or when the item timed out or crashed its worker), cut to
        MAX_EXTRACTED_CHARS.
      timeouts: items that passed their deadline (scored 0).
      errors: items whose grading raised or crashed a worker (scored 0).
      unclosed: under the think rule, responses that never closed their
        thinking (scored 0); 0 when the rule is off.
      correct: per response, whether its answer is right (the grade, whatever
        the reward kind paid).
      well_formed: per response, whether an answer was extracted: in "boxed"
        mode `checker.well_formed`; False for an item that timed out or
        crashed its worker.
    """

    rewards: list[float]
    extracted: list[str | None]
    timeouts: int
    errors: int
    unclosed: int = 0
    correct: list[bool] = dataclasses.field(default_factory=list)
    well_formed: list[bool] = dataclasses.field(default_factory=list)


KINDS = ("correct", "format", "random", "correct_or_format")
# Mixed into every random draw, so that no other stream drawn from the run's
# seed (data order, sampling) can coincide with the rewards'.
_RANDOM_TAG = 0x5245_5744  # "REWD"


def random_rewards(seed: int, step: int, rows: Iterable[int], p: float) -> list[float]:
    """Bernoulli(p) rewards, 1.0 or 0.0, one per global row number in `rows`.

    Each draw is the first 64-bit output of a Philox generator keyed by a
    SeedSequence of (tag, seed, step, row): a pure function of those numbers,
    blind to the response, to the other rows and to how the step's rows were
    split between processes or calls, and the same on a resumed run.

    Args:
      seed: the run's seed (>= 0).
      step: the training step whose responses are rewarded (>= 0).
      rows: the responses' global row numbers within the step (>= 0).
      p: the probability of a reward of 1, in [0, 1].

    Returns:
      1.0 or 0.0 per row, in the order of `rows`.
    """
    # Imported here: the reward package stays free of numpy for the workers
    # and the `rlvr_jax.checker` command (tests/test_checker.py).
    import numpy as np

    out = []
    for row in rows:
        key = np.random.SeedSequence([_RANDOM_TAG, seed, step, int(row)])
        raw = int(np.random.Philox(key).random_raw())
        # The top 53 bits as a double in [0, 1), as numpy's `random()` does:
        # p=0 never pays, p=1 always does.
        out.append(1.0 if (raw >> 11) * 2.0**-53 < p else 0.0)
    return out


@dataclasses.dataclass(frozen=True)
class RewardKind:
    """What a training response earns, given its grade (`RewardPool.score`).

    Attributes:
      kind: "correct": 1 for a right answer (the paper's verifiable reward);
        "format": 1 for a well-formed final boxed answer
        (`checker.well_formed`), right or wrong; "random": Bernoulli(random_p)
        per response (`random_rewards`), blind to it; "correct_or_format": 1
        if right, else format_value if well formed, else 0.
      random_p: the "random" kind's probability of a reward of 1.
      format_value: what a well-formed wrong answer earns under
        "correct_or_format".
      seed: the run's seed, which keys the "random" draws with the step and
        the row.
    """

    kind: str = "correct"
    random_p: float = 0.5
    format_value: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"reward kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("random_p", "format_value"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:  # NaN too
                raise ValueError(f"{name}={value} must be in [0, 1]")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be >= 0")

    def rewards(
        self,
        correct: list[bool],
        well_formed: list[bool],
        *,
        step: int = 0,
        row_offset: int = 0,
    ) -> list[float]:
        """The reward of each response.

        Args:
          correct: per response, whether its answer is right.
          well_formed: per response, whether it has a well-formed answer.
          step: the training step (keys the "random" draws).
          row_offset: the global row number of the first response (keys the
            "random" draws: a process scoring a slice of the step's responses
            draws what one process scoring them all would).

        Returns:
          One reward per response, in [0, 1].
        """
        if len(correct) != len(well_formed):
            raise ValueError(
                f"{len(correct)} grades but {len(well_formed)} format flags"
            )
        if self.kind == "random":
            rows = range(row_offset, row_offset + len(correct))
            return random_rewards(self.seed, step, rows, self.random_p)
        if self.kind == "format":
            return [1.0 if w else 0.0 for w in well_formed]
        if self.kind == "correct_or_format":
            return [
                1.0 if c else self.format_value if w else 0.0
                for c, w in zip(correct, well_formed, strict=True)
            ]
        return [1.0 if c else 0.0 for c in correct]


def _worker_main(conn, scorer, memory_limit_mb: int | None) -> None:
    """A worker's loop: score chunks of items, one result message per item."""
    # Ctrl-C goes to the whole process group; the parent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory_limit_mb and sys.platform.startswith("linux"):
        import resource

        limit = memory_limit_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        mode, think, items = msg
        for index, response, gold in items:
            if think:
                # Here rather than in the scorer, so that any scorer (tests
                # plant their own) grades what the rule leaves; the parent
                # sends only responses that closed their thinking.
                response = checker.after_thinking(response)
            try:
                value, extracted, error = scorer(response, gold, mode)
                value = float(value)
            except Exception:  # noqa: BLE001 - MemoryError, RecursionError too
                value, extracted, error = 0.0, None, True
            if isinstance(extracted, str) and len(extracted) > MAX_EXTRACTED_CHARS:
                extracted = extracted[:MAX_EXTRACTED_CHARS]
            conn.send((index, value, extracted, bool(error)))


class _Worker:
    """Parent-side handle: the process, its pipe and the items it holds."""

    def __init__(self, proc, conn, start_deadline: float):
        self.proc = proc
        self.conn = conn
        self.ready = False
        self.start_deadline = start_deadline
        self.items: collections.deque[int] = collections.deque()
        self.deadline = float("inf")


def _default_workers() -> int:
    return max(1, min(32, os.cpu_count() or 1))


def _context(start_method: str | None):
    methods = multiprocessing.get_all_start_methods()
    if start_method is None:
        start_method = "forkserver" if "forkserver" in methods else "spawn"
    if start_method not in ("forkserver", "spawn"):
        raise ValueError(
            f"start_method must be forkserver or spawn, got {start_method}"
        )
    ctx = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        # No effect if this process's fork server is already running.
        ctx.set_forkserver_preload(["rlvr_jax.reward.checker"])
    return ctx


class RewardPool:
    """A reusable pool of grading processes with per-item deadlines.

    Not thread-safe: one `score` call at a time. Use as a context manager or
    call `close()`.

    Attributes:
      timeout_s: the default per-item deadline.
      mode: the default extraction mode.
      think: whether the think rule is on by default.
      restarts: workers replaced so far after a timeout or a crash.
    """

    def __init__(
        self,
        workers: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        mode: str = "boxed",
        *,
        think: bool = False,
        scorer=None,
        memory_limit_mb: int | None = 4096,
        start_timeout_s: float = 120.0,
        start_method: str | None = None,
    ):
        """Starts the workers (they become ready in the background).

        Args:
          workers: number of processes; None means one per CPU (at most 32).
          timeout_s: default per-item deadline in seconds.
          mode: default extraction mode: "boxed" (training reward) or "eval".
          think: the default for the think rule (`checker.after_thinking`):
            grade only the text after `</think>`; a response that never
            closes its thinking scores 0.
          scorer: a picklable `f(response, gold, mode) -> (reward, extracted,
            error)`; defaults to `checker.score_item`. Tests use it to plant a
            hanging grader.
          memory_limit_mb: address-space limit per worker (Linux); None for none.
          start_timeout_s: how long a new worker may take to become ready.
          start_method: "forkserver" or "spawn"; None picks forkserver if the
            platform has it.
        """
        if mode not in checker.MODES:
            raise ValueError(f"mode must be one of {checker.MODES}, got {mode!r}")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.timeout_s = float(timeout_s)
        self.mode = mode
        self.think = bool(think)
        self._scorer = scorer or checker.score_item
        self._memory_limit_mb = memory_limit_mb
        self._start_timeout_s = start_timeout_s
        self._ctx = _context(start_method)
        self._closed = False
        self.restarts = 0
        self._workers = [self._spawn() for _ in range(workers or _default_workers())]

    @property
    def size(self) -> int:
        """The number of worker processes."""
        return len(self._workers)

    def _spawn(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=_worker_main,
            args=(child_conn, self._scorer, self._memory_limit_mb),
            name="rlvr-reward-worker",
            daemon=True,
        )
        proc.start()
        child_conn.close()
        return _Worker(proc, parent_conn, time.monotonic() + self._start_timeout_s)

    def _replace(self, k: int) -> None:
        w = self._workers[k]
        if w.proc.is_alive():
            w.proc.kill()
        w.proc.join(timeout=10)
        w.conn.close()
        self._workers[k] = self._spawn()
        self.restarts += 1

    def score(
        self,
        responses: list[str],
        ground_truths: list,
        *,
        timeout_s: float | None = None,
        mode: str | None = None,
        think: bool | None = None,
        kind: RewardKind | None = None,
        step: int = 0,
        row_offset: int = 0,
    ) -> ScoreResult:
        """Scores responses against ground truths, in input order.

        Args:
          responses: model responses.
          ground_truths: one gold answer per response.
          timeout_s: per-item deadline; defaults to the pool's.
          mode: "boxed" or "eval"; defaults to the pool's.
          think: the think rule on or off; defaults to the pool's.
          kind: what a response earns (`RewardKind`); None is the grade
            itself ("correct"). Kinds other than "correct" need "boxed" mode.
          step: the training step, for the "random" kind's draws.
          row_offset: the global row number of `responses[0]` within the
            step, for the "random" kind's draws (a process that scores only
            its slice of a step passes where the slice starts).

        Returns:
          A ScoreResult. Items past their deadline or that crash a worker
          are graded wrong and not well formed, and are counted; under the
          "random" kind they still get their draw.
        """
        if self._closed:
            raise RuntimeError("RewardPool is closed")
        if len(responses) != len(ground_truths):
            raise ValueError(
                f"{len(responses)} responses but {len(ground_truths)} ground truths"
            )
        mode = mode or self.mode
        if mode not in checker.MODES:
            raise ValueError(f"mode must be one of {checker.MODES}, got {mode!r}")
        think = self.think if think is None else bool(think)
        if kind is not None and kind.kind != "correct" and mode != "boxed":
            raise ValueError(f"reward kind {kind.kind!r} needs mode 'boxed'")
        if step < 0 or row_offset < 0:
            raise ValueError(f"step={step} and row_offset={row_offset} must be >= 0")
        timeout = float(timeout_s or self.timeout_s)
        n = len(responses)
        rewards = [0.0] * n
        extracted: list[str | None] = [None] * n
        counts = {"timeouts": 0, "errors": 0}
        pending = collections.deque(range(n))
        unclosed = 0
        if think:  # never closed its thinking: 0 at once, no worker needed
            pending = collections.deque(
                i for i in range(n) if checker.after_thinking(responses[i]) is not None
            )
            unclosed = n - len(pending)
        remaining = len(pending)
        # Small chunks keep every worker busy without long queues behind a
        # stuck item; a chunk is only sent to an idle worker, so a send never
        # blocks on a worker that is not reading.
        chunk = max(1, min(16, n // (4 * len(self._workers)) or 1))

        def finish(index: int, value: float, answer, error: bool) -> None:
            nonlocal remaining
            rewards[index] = value
            extracted[index] = answer
            counts["errors"] += bool(error)
            remaining -= 1

        def drop_worker(k: int, outcome: str) -> None:
            # The head item is the one being graded; the rest are re-queued.
            w = self._workers[k]
            if w.items:
                finish(w.items.popleft(), 0.0, None, outcome == "error")
                if outcome == "timeout":
                    counts["timeouts"] += 1
                pending.extendleft(reversed(w.items))
                w.items.clear()
            self._replace(k)

        while remaining:
            now = time.monotonic()
            for k, w in enumerate(self._workers):
                if w.ready and not w.items and pending:
                    batch = [pending.popleft() for _ in range(min(chunk, len(pending)))]
                    try:
                        w.conn.send(
                            (
                                mode,
                                think,
                                [(i, responses[i], ground_truths[i]) for i in batch],
                            )
                        )
                    except (OSError, EOFError):
                        pending.extendleft(reversed(batch))
                        self._replace(k)
                        continue
                    w.items.extend(batch)
                    w.deadline = now + timeout
            deadlines = [
                w.deadline if w.ready else w.start_deadline
                for w in self._workers
                if w.items or not w.ready
            ]
            wait_s = max(0.0, min(deadlines) - now) if deadlines else None
            handles = [w.conn for w in self._workers] + [
                w.proc.sentinel for w in self._workers
            ]
            wait(handles, timeout=wait_s)
            for k in range(len(self._workers)):
                w = self._workers[k]
                dead = False
                try:
                    while w.conn.poll():
                        msg = w.conn.recv()
                        if msg[0] == "ready":
                            w.ready = True
                            continue
                        index, value, answer, error = msg
                        if not w.items or w.items[0] != index:
                            raise RuntimeError("reward worker answered out of order")
                        w.items.popleft()
                        finish(index, value, answer, error)
                        w.deadline = time.monotonic() + timeout
                except (EOFError, OSError):
                    dead = True
                if dead or not w.proc.is_alive():
                    if not w.ready:
                        w.proc.join(timeout=1)
                        self.close()
                        raise RuntimeError(
                            "a reward worker died while starting (exit code "
                            f"{w.proc.exitcode}); is the main module guarded by "
                            "`if __name__ == '__main__':`?"
                        )
                    drop_worker(k, "error")
            now = time.monotonic()
            for k, w in enumerate(self._workers):
                if w.items and now > w.deadline:
                    drop_worker(k, "timeout")
                elif not w.ready and now > w.start_deadline:
                    self.close()
                    raise RuntimeError(
                        f"a reward worker did not start within {self._start_timeout_s} s"
                    )
        # Checker grades are 1.0 or 0.0 (a planted scorer may pay between);
        # in "boxed" mode an answer is extracted exactly from the well-formed
        # responses (`checker.score_item`).
        correct = [r > 0 for r in rewards]
        well_formed = [x is not None for x in extracted]
        if kind is not None and kind.kind != "correct":
            rewards = kind.rewards(
                correct, well_formed, step=step, row_offset=row_offset
            )
        return ScoreResult(
            rewards,
            extracted,
            counts["timeouts"],
            counts["errors"],
            unclosed,
            correct=correct,
            well_formed=well_formed,
        )

    def close(self) -> None:
        """Stops the workers. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            try:
                w.conn.send(None)
            except (OSError, EOFError):
                pass
        end = time.monotonic() + 2.0
        for w in self._workers:
            w.proc.join(timeout=max(0.0, end - time.monotonic()))
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(timeout=5)
            w.conn.close()

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


_shared: dict = {}
_shared_lock = threading.Lock()


def _close_shared() -> None:
    pool = _shared.pop("pool", None)
    if pool is not None:
        pool.close()


def score_batch(
    responses: list[str],
    ground_truths: list,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    *,
    mode: str = "boxed",
    think: bool = False,
) -> list[float]:
    """Scores responses in a shared, lazily started pool (one per process).

    For the rewards plus timeout/error counts, or control over the workers,
    use a `RewardPool`.

    Args:
      responses: model responses.
      ground_truths: one gold answer per response.
      timeout_s: per-item deadline in seconds.
      mode: "boxed" (the training reward) or "eval" (lenient extraction).
      think: the think rule (`RewardPool`).

    Returns:
      1.0 or 0.0 per response, in input order.
    """
    with _shared_lock:
        pool = _shared.get("pool")
        if pool is None or pool._closed:
            if not _shared:
                atexit.register(_close_shared)
            pool = _shared["pool"] = RewardPool()
        return pool.score(
            responses, ground_truths, timeout_s=timeout_s, mode=mode, think=think
        ).rewards
