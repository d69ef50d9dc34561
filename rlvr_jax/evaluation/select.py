"""Training-example selection: rank a pool, write the chosen examples replicated.

Historical variance (docs/recipe.md): train on the whole pool, record for every
example the fraction of its rollouts that were correct each time it was
sampled, score it by the population standard deviation (ddof 0) of that
history, and rank by score, descending. The sort is stable over the history
file's own key order, so ties (e.g. the all-zero histories at the bottom) keep
the order in which the file lists them; π_i is rank i.

    # π1 replicated to the paper's batch of 128 (veRL parquet), from the
    # packaged history and pool (`--history` / `--pool` take files too):
    python -m rlvr_jax.select --ranks=1 --batch_size=128 --output=pi1_r128.parquet
    # {π1, π13} × 64, from our own training run's history:
    python -m rlvr_jax.select --workdir=/tmp/dsr_run --ranks=1,13 \
        --batch_size=128 --output=pi1_pi13_r128.parquet
    # a random example instead:
    python -m rlvr_jax.select --method=random --seed=0 --ranks=1 \
        --batch_size=128 --output=rand.parquet

The output rows are the pool's own rows (every column kept) in pool order,
the whole selection repeated until it fills `batch_size`, as the reference's
replicated parquet files store them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

from rlvr_jax import io as io_lib
from rlvr_jax.data import paper_data
from rlvr_jax.io import HISTORY_FILE

METHODS = ("variance", "random")


class SelectionError(ValueError):
    """A bad history file, pool or request; the message names which."""


# ----------------------------------------------------------------- history
def read_history(path: str) -> dict[str, list[float]]:
    """An accuracy history {example index: [accuracy per epoch]}, file order.

    Args:
      path: a JSON file, a training workdir holding `accuracy_history.json`,
        or a packaged name (`acc_step_500`: the paper's full-pool history).

    Raises:
      SelectionError: a missing file, invalid JSON, or a malformed entry.
    """
    path = paper_data.local_or_packaged(path)
    if os.path.isdir(path):
        path = os.path.join(path, HISTORY_FILE)
    if not os.path.isfile(path):
        raise SelectionError(f"accuracy history not found: {path}")
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise SelectionError(f"{path}: malformed JSON ({e})") from e
    if not isinstance(data, dict) or not data:
        raise SelectionError(f"{path}: expected a non-empty {{index: [acc, ...]}} map")
    for key, values in data.items():
        if not str(key).lstrip("-").isdigit():
            raise SelectionError(f"{path}: key {key!r} is not an example index")
        if not isinstance(values, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
        ):
            raise SelectionError(f"{path}: entry {key!r} is not a list of numbers")
    return data


# ----------------------------------------------------------------- scoring
def variance_scores(history: Mapping[str, Sequence[float]]) -> dict[int, float]:
    """Population std (ddof 0) of each example's history; empty histories → 0."""
    return {
        int(k): float(np.std(np.asarray(v, np.float64))) if len(v) else 0.0
        for k, v in history.items()
    }


def rank(
    history: Mapping[str, Sequence[float]], method: str = "variance", seed: int = 0
) -> list[tuple[int, float]]:
    """The pool ranked best first: [(example index, score), ...].

    Args:
      history: {index: accuracy history}, in file order.
      method: "variance" (historical variance, descending, stable) or
        "random" (a seeded permutation; the score is the draw).
      seed: seed of the random method.

    Raises:
      SelectionError: an unknown method.
    """
    if method == "variance":
        scores = variance_scores(history)
        indices = list(scores)
        values = np.array([scores[i] for i in indices])
        # Stable on the negated score: ties keep the history's own order.
        order = np.argsort(-values, kind="stable")
        return [(indices[i], float(values[i])) for i in order]
    if method == "random":
        draws = np.random.default_rng(seed).random(len(history))
        indices = [int(k) for k in history]
        order = np.argsort(-draws, kind="stable")
        return [(indices[i], float(draws[i])) for i in order]
    raise SelectionError(f"unknown selection method {method!r}; known: {METHODS}")


def pick(ranking: Sequence[tuple[int, float]], ranks: Sequence[int]) -> list[int]:
    """Example indices at 1-based `ranks` of a ranking (π_i is rank i)."""
    out = []
    for r in ranks:
        if not 1 <= r <= len(ranking):
            raise SelectionError(f"rank {r} is outside 1..{len(ranking)}")
        out.append(ranking[r - 1][0])
    return out


# -------------------------------------------------------------------- pool
def _read_pool(path: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = paper_data.local_or_packaged(path)
    if not os.path.isfile(path):
        raise SelectionError(f"pool file not found: {path}")
    if path.endswith(".parquet"):
        return pq.read_table(path)
    if path.endswith(".jsonl"):
        try:
            return pa.Table.from_pylist(io_lib.read_jsonl(path))
        except io_lib.JsonlError as e:
            raise SelectionError(str(e)) from e
    raise SelectionError(f"{path}: pool must be a veRL .parquet or .jsonl file")


def replicated_rows(pool_path: str, indices: Sequence[int], batch_size: int):
    """The pool rows of `indices` tiled to `batch_size` rows (a pyarrow Table).

    Rows are taken in pool order and the selection is repeated as a block
    (`[a, b, a, b, ...]`), the reference's layout; for one example that is
    simply the example `batch_size` times.

    Raises:
      SelectionError: indices missing from the pool (veRL `extra_info.index`),
        or a batch size that is not a multiple of the selection.
    """
    import pyarrow as pa

    table = _read_pool(pool_path)
    if "extra_info" not in table.column_names:
        raise SelectionError(f"{pool_path}: not a veRL file (no extra_info column)")
    pool_index = [
        (e or {}).get("index") for e in table.column("extra_info").to_pylist()
    ]
    wanted = set(indices)
    if len(wanted) != len(indices):
        raise SelectionError(f"duplicate example indices in {list(indices)}")
    rows = [i for i, idx in enumerate(pool_index) if idx in wanted]
    missing = sorted(wanted - {pool_index[i] for i in rows})
    if missing:
        raise SelectionError(f"{pool_path}: example indices {missing} not in the pool")
    if len(rows) != len(wanted):
        raise SelectionError(f"{pool_path}: an example index appears more than once")
    if batch_size <= 0 or batch_size % len(rows):
        raise SelectionError(
            f"batch_size {batch_size} is not a positive multiple of the "
            f"{len(rows)} selected examples"
        )
    take = pa.array(rows * (batch_size // len(rows)), pa.int64())
    return table.take(take)


def write_parquet(table, path: str) -> None:
    """Writes `table` as a parquet file, atomically (`rlvr_jax.io`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    io_lib.write_atomic(path, sink.getvalue().to_pybytes())


# --------------------------------------------------------------------- CLI
def main(argv: Sequence[str]) -> None:
    from absl import flags

    del argv
    f = flags.FLAGS
    history = read_history(f.workdir or f.history)
    ranking = rank(history, f.method, f.seed)
    ranks = [int(r) for r in f.ranks]
    chosen = pick(ranking, ranks)
    width = max(len(str(len(ranking))), 4)
    print(f"method={f.method}  pool size={len(ranking)}")
    for r in sorted(set(range(1, min(f.show, len(ranking)) + 1)) | set(ranks)):
        index, score = ranking[r - 1]
        mark = "  <- selected" if r in ranks else ""
        print(f"rank {r:>{width}}  index {index:>{width}}  score {score:.6f}{mark}")
    if f.output:
        table = replicated_rows(f.pool, chosen, f.batch_size)
        write_parquet(table, f.output)
        print(f"wrote {table.num_rows} rows (indices {chosen}) to {f.output}")


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string(
        "history",
        "acc_step_500",
        "accuracy history JSON {index: [acc, ...]}; default: the paper's (packaged)",
    )
    flags.DEFINE_string(
        "workdir", "", f"training workdir holding {HISTORY_FILE} (over --history)"
    )
    flags.DEFINE_enum("method", "variance", list(METHODS), "ranking method")
    flags.DEFINE_integer("seed", 0, "seed of the random method")
    flags.DEFINE_list("ranks", ["1"], "1-based ranks to select (π_i is rank i)")
    flags.DEFINE_string(
        "pool",
        "dsr_sub",
        "the pool in veRL format (parquet or jsonl); default: DSR-sub",
    )
    flags.DEFINE_integer("batch_size", 128, "rows of the written file")
    flags.DEFINE_string("output", "", "veRL parquet to write; '' = only print")
    flags.DEFINE_integer("show", 20, "print this many top ranks")


def run(argv: Sequence[str]) -> None:
    """absl entry: clean one-line errors for bad input, non-zero exit."""
    try:
        main(argv)
    except SelectionError as e:
        raise SystemExit(f"error: {e}") from None


def cli() -> None:
    """The command line (`python -m rlvr_jax.select`)."""
    from absl import app

    _define_flags()
    app.run(run)


if __name__ == "__main__":
    cli()
