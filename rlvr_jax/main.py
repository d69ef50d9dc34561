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

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from rlvr_jax import distributed, metrics


def define_flags() -> None:
    """The command line's flags (defined when run, so that importing this
    module for `run_and_report` defines none)."""
    config_flags.DEFINE_config_file(
        "config", None, "Experiment config file (configs/*.py[:arg]).", lock_config=True
    )
    flags.DEFINE_string(
        "workdir", None, "Checkpoints, metrics and exports go here (local or gs://)."
    )
    flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad `--config.` override ending in one
    `error:` line (the key and the nearest known one) instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except (KeyError, AttributeError) as e:  # an unknown key
        message = str(e).strip("'\"").replace("\\n", "\n").replace("\\'", "'")
        key = message.splitlines()[0].strip("'\\")
        overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
        where = next((o for o in overrides if key in o.split(".")[1:]), None)
        hint = message.splitlines()[-1] if "Did you mean" in message else ""
        print(
            f"error: {where or key} is not a key of the config"
            + (f"; {hint[0].lower()}{hint[1:]}" if hint else ""),
            file=sys.stderr,
            flush=True,
        )
        sys.exit(2)
    except (TypeError, ValueError, flags.Error) as e:  # a value of the wrong type
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr, flush=True)
        sys.exit(2)


def run_and_report(config, workdir: str) -> int:
    """`train.run`, a bad input or a failed file operation ending in one
    `error:` line on stderr; returns the exit status (0, or 1 on error)."""
    from rlvr_jax import io as io_lib
    from rlvr_jax import train

    if os.path.exists(workdir) and not os.path.isdir(workdir):
        print(f"error: --workdir={workdir} is a file, not a directory", file=sys.stderr)
        return 1
    try:
        train.run(config, workdir)
    except train.Preempted as e:
        print(str(e), flush=True)
    except OSError as e:  # a full disk, a read-only mount, a lost file
        print(f"error: {io_lib.describe_os_error(e)}", file=sys.stderr, flush=True)
        return 1
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    metrics.quiet_library_logs()
    distributed.setup()
    status = run_and_report(flags.FLAGS.config, flags.FLAGS.workdir)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=parse_flags)
