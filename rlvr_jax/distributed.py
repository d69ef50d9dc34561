"""Process setup: joining a multi-process JAX run, shared by every entry point.

`python -m rlvr_jax.main` and `python -m rlvr_jax.evaluate` call `setup()`
first. Several processes (a TPU pod, a GPU cluster, or several local CPU
processes) run the same command, each with its own process id:

    ... --coordinator_address=HOST:PORT --num_processes=N --process_id=I

The three values may instead come from JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID. Without them, `jax.distributed` is
initialised with cluster auto-detection where the environment names several
workers (a TPU pod's TPU_WORKER_HOSTNAMES, a SLURM job with several tasks), or
when `--distributed` is given. On CPU the collectives go through gloo.

The flags are defined when this module is imported (by the entry points).
"""

from __future__ import annotations

import os

from absl import app, flags

_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    None,
    "Call jax.distributed.initialize() (multi-host). Default: auto-detect.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "HOST:PORT of process 0's coordination service (env JAX_COORDINATOR_ADDRESS).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in the run (env JAX_NUM_PROCESSES)."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's id, 0..N-1 (env JAX_PROCESS_ID)."
)
_HEARTBEAT_S = flags.DEFINE_integer(
    "heartbeat_timeout_s",
    30,
    "A process silent this long is declared dead and the others stop.",
)


def _explicit(flag, env: str, cast):
    """A flag's value, else its environment variable's, else None."""
    if flag.value is not None:
        return flag.value
    value = os.environ.get(env)
    if value in (None, ""):
        return None
    try:
        return cast(value)
    except ValueError:
        raise app.UsageError(f"{env}={value!r} is not a valid value") from None


def initialize_args() -> dict | None:
    """Keyword arguments for `jax.distributed.initialize`, or None (one process).

    Explicit values (flags, then environment) win; what they leave unset is
    auto-detected by `jax.distributed` (TPU pod metadata, SLURM variables).

    Raises:
      app.UsageError: an inconsistent explicit setting.
    """
    address = _explicit(_COORDINATOR, "JAX_COORDINATOR_ADDRESS", str)
    count = _explicit(_NUM_PROCESSES, "JAX_NUM_PROCESSES", int)
    index = _explicit(_PROCESS_ID, "JAX_PROCESS_ID", int)
    if count is not None and count < 1:
        raise app.UsageError(f"--num_processes must be >= 1, got {count}")
    if index is not None and count is not None and not 0 <= index < count:
        raise app.UsageError(
            f"--process_id={index} is outside 0..{count - 1} (--num_processes)"
        )
    if count is not None and count > 1 and address is None:
        raise app.UsageError(
            f"--num_processes={count} needs --coordinator_address=HOST:PORT "
            "(process 0's host and a free port)"
        )
    explicit = (address, count, index) != (None, None, None)
    if _DISTRIBUTED.value is False or (count == 1 and not _DISTRIBUTED.value):
        return None
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
    if not (_DISTRIBUTED.value or explicit or "," in hosts or slurm_tasks > 1):
        return None
    return {
        "coordinator_address": address,
        "num_processes": count,
        "process_id": index,
        "heartbeat_timeout_seconds": _HEARTBEAT_S.value,
    }


def setup() -> None:
    """Prepares this process for JAX, before anything touches a device.

    Selects gloo for cross-process CPU collectives, joins the multi-process
    run the flags / environment / cluster describe (see the module
    docstring), and points the persistent compilation cache at
    `~/.cache/rlvr_jax/xla` unless JAX_COMPILATION_CACHE_DIR chose a place.

    Raises:
      app.UsageError: inconsistent process flags (before any JAX work).
    """
    import jax

    # gloo carries the cross-process collectives of CPU devices (local
    # multi-process runs, tests); accelerators use their own interconnect.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    init = initialize_args()
    if init is not None:
        jax.distributed.initialize(**init)
        # Names this process in its log: the coordination service's errors
        # speak of "task I" and of the "leader" (process 0, its host).
        print(
            f"process {jax.process_index()} of {jax.process_count()}: "
            f"{jax.local_device_count()} of {jax.device_count()} devices",
            flush=True,
        )
    # Compiled programs are cached across restarts (preemption, resume,
    # sweeps), unless JAX_COMPILATION_CACHE_DIR already chose a place.
    if not jax.config.jax_compilation_cache_dir:
        cache = os.path.join(os.path.expanduser("~"), ".cache", "rlvr_jax", "xla")
        jax.config.update("jax_compilation_cache_dir", cache)
