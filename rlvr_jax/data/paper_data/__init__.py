"""The paper's data, shipped inside the package (sources: SOURCES.md here).

The 1-shot RLVR run needs nothing but model weights: the training pool, the
historical-variance history that ranks it, and the six evaluation benchmarks
(plus the ×8 replicated files of the T = 0.6 ones) are files of this package.

Config fields that take a data file accept a packaged name wherever they take
a path (`data.train_path=dsr_sub`, `eval.path=math500`); `path(name)` resolves
one. Evaluation reads `<eval_dir()>/<benchmark>/test.jsonl` when no directory
is given.
"""

from __future__ import annotations

import os

_HERE = os.path.dirname(os.path.abspath(__file__))

# name → file, relative to this directory. The names are what configs use.
FILES = {
    # The 1,209-example DSR-sub pool (veRL rows; π1 is extra_info.index 124).
    "dsr_sub": "train/dsr_sub.parquet",
    # π1 replicated 128×, as the reference's training file stores it.
    "pi1_r128": "train/pi1_r128.parquet",
    # MATH500 in veRL format: the in-training validation set.
    "math500": "eval/math500/verl_val.parquet",
    # index → per-epoch training accuracy of the full-pool run (500 steps).
    "acc_step_500": "train/acc_step_500.json",
}


def path(name: str) -> str:
    """The absolute path of packaged file `name` (a key of `FILES`).

    Raises:
      KeyError: naming the unknown name and the known ones.
    """
    if name not in FILES:
        raise KeyError(f"no packaged data named {name!r}; known: {sorted(FILES)}")
    return os.path.join(_HERE, FILES[name])


def local_or_packaged(source: str) -> str:
    """`source` itself when it exists; else the packaged file of that name."""
    if not os.path.exists(source) and source in FILES:
        return path(source)
    return source


def eval_dir() -> str:
    """The directory of packaged `<benchmark>/test.jsonl` files."""
    return os.path.join(_HERE, "eval")
