"""Entry point: `python -m rlvr_jax.main --config=configs/pi1.py[:tiny] --workdir=DIR`.

Any config field can be overridden on the command line, e.g.
`--config.loss.pg_coef=0` (the entropy-only ablation) or
`--config.train.steps=100`; unknown fields are an error (the config is
locked). On a multi-host TPU pod or GPU cluster pass `--distributed` (it is
switched on automatically where the TPU runtime names several workers).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from rlvr_jax import metrics

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py[:arg]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Checkpoints, metrics and exports go here (local or gs://)."
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    None,
    "Call jax.distributed.initialize() (multi-host). Default: auto-detect.",
)
flags.mark_flags_as_required(["config", "workdir"])


def _multi_host() -> bool:
    if _DISTRIBUTED.value is not None:
        return _DISTRIBUTED.value
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return "," in hosts or "JAX_COORDINATOR_ADDRESS" in os.environ


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    metrics.quiet_library_logs()
    import jax

    if _multi_host():
        jax.distributed.initialize()
    # Compiled programs are cached across restarts (preemption, resume),
    # unless JAX_COMPILATION_CACHE_DIR already chose a place.
    if not jax.config.jax_compilation_cache_dir:
        cache = os.path.join(os.path.expanduser("~"), ".cache", "rlvr_jax", "xla")
        jax.config.update("jax_compilation_cache_dir", cache)

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
