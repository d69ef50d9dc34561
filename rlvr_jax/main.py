"""Entry point: `python -m rlvr_jax.main --config=configs/pi1.py[:tiny] --workdir=DIR`.

Any config field can be overridden on the command line, e.g.
`--config.loss.pg_coef=0` (the entropy-only ablation) or
`--config.train.steps=100`; unknown fields are an error (the config is
locked).

Several processes (a TPU pod, a GPU cluster, or several local CPU processes)
run the same command, each with its own process id:

    python -m rlvr_jax.main --config=... --workdir=W \
        --coordinator_address=HOST:PORT --num_processes=N --process_id=I

(or the JAX_* environment variables, or cluster auto-detection: see
`rlvr_jax.distributed`, which defines these flags).
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from rlvr_jax import distributed, metrics

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py[:arg]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Checkpoints, metrics and exports go here (local or gs://)."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    metrics.quiet_library_logs()
    distributed.setup()

    from rlvr_jax import train

    config = _CONFIG.value
    try:
        train.run(config, _WORKDIR.value)
    except train.Preempted as e:
        print(str(e), flush=True)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
