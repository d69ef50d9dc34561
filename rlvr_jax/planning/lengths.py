"""Response-length mixes: the lengths a plan's step is costed at.

A rollout's cost depends on how long its responses run. The planner's
all-at-max figure assumes every response reaches rollout.max_new_tokens;
real responses are long-tailed (Qwen2.5-Math on MATH: median about 346
tokens, p99 about 1,569, longest 2,109), so a plan also prices the step at a
mix of lengths drawn from one of these sources (`--lengths=SOURCE`):

  (default)                 the packaged measured mix,
                            rlvr_jax/data/lengths/qwen25_math_responses.json
                            (its SOURCES.md says where it comes from)
  path/to/lengths.json      token counts: {"groups": [[ints], ...]} (one
                            list per prompt) or a flat list of ints, bare or
                            under "lengths"
  path/to/workdir           a run's own lengths, the last `steps` steps of
                            its <workdir>/response_lengths.jsonl (written by
                            the train loop, `metrics.LengthsWriter`)
  lognormal:median=M,p99=P  a lognormal of that median and 99th percentile
                            (seeded)
  max                       no mix: the all-at-max plan alone

A rollout of R = prompts × n rows is drawn from the source (`draw`): as
whole groups of n when the source has groups of n (a prompt's samples are
alike in length, which is what keeps a slot busy or idle), else one length
at a time, with replacement, from a seeded generator. Lengths above
max_new_tokens are capped (the run truncates them there), and counted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re

import numpy as np

from rlvr_jax import io as io_lib
from rlvr_jax import metrics as metrics_lib

PACKAGED = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "data",
    "lengths",
    "qwen25_math_responses.json",
)
DEFAULT = "packaged"  # the `--lengths` default: `PACKAGED`
MAX = "max"  # no mix: every response at max_new_tokens
LENGTHS_FILE = metrics_lib.LENGTHS_FILE  # a workdir's per-step lengths
STEPS = 8  # steps of a workdir's lengths read (the last ones)
_Z99 = 2.3263478740408408  # the standard normal's 99th percentile


@dataclasses.dataclass(frozen=True)
class Mix:
    """A source of response lengths.

    Attributes:
      name: what it is, for the report.
      groups: lists of token counts of one prompt's samples each (None for
        a source without groups).
      lengths: every token count of the source, flat (empty for a
        distribution).
      lognormal: (mu, sigma) of a lognormal source (None otherwise).
    """

    name: str
    groups: tuple[np.ndarray, ...] | None = None
    lengths: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros(0, np.int64)
    )
    lognormal: tuple[float, float] | None = None


def _counts(values, where: str) -> np.ndarray:
    """Positive integer token counts, or a one-line ValueError."""
    if not isinstance(values, list) or not values:
        raise ValueError(f"{where}: expected a non-empty list of token counts")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(
                f"{where}: token counts must be positive integers, not {v!r}"
            )
    return np.asarray(values, np.int64)


def from_json(data, name: str) -> Mix:
    """A mix from a lengths file's JSON: {"groups": [[...], ...]}, a flat
    list, or {"lengths": [...]}."""
    if isinstance(data, dict) and "groups" in data:
        raw = data["groups"]
        if not isinstance(raw, list) or not raw:
            raise ValueError(f"{name}: 'groups' must be a non-empty list of lists")
        groups = tuple(_counts(g, f"{name}: group {i}") for i, g in enumerate(raw))
        return Mix(name, groups, np.concatenate(groups))
    if isinstance(data, dict) and "lengths" in data:
        data = data["lengths"]
    if isinstance(data, list):
        return Mix(name, lengths=_counts(data, name))
    raise ValueError(
        f"{name}: expected {{'groups': [[...], ...]}} or a list of token counts"
    )


def from_file(path: str) -> Mix:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read lengths {path!r}: {e}") from e
    return from_json(data, path)


def from_workdir(workdir: str, steps: int = STEPS) -> Mix:
    """The last `steps` logged steps of a run's response lengths, one group
    per prompt (each row's `n` samples)."""
    path = os.path.join(workdir, LENGTHS_FILE)
    if not os.path.exists(path):
        raise ValueError(
            f"no {LENGTHS_FILE} in {workdir!r} (a run logs it from its first step)"
        )
    rows = [r for r in io_lib.read_log(path) if r.get("lengths")]
    if not rows:
        raise ValueError(f"{path}: no step has logged lengths yet")
    rows = sorted(rows, key=lambda r: r.get("step", 0))[-steps:]
    groups = []
    for r in rows:
        lengths = _counts(r["lengths"], f"{path}: step {r.get('step')}")
        n = int(r.get("n", 1)) or 1
        if len(lengths) % n:
            raise ValueError(f"{path}: step {r.get('step')}: not groups of {n}")
        groups += list(lengths.reshape(-1, n))
    name = f"{workdir} (steps {rows[0].get('step')}-{rows[-1].get('step')})"
    return Mix(name, tuple(groups), np.concatenate(groups))


def from_lognormal(spec: str) -> Mix:
    """`lognormal:median=M,p99=P` (M < P, both positive)."""
    fields = dict(re.findall(r"(\w+)=([^,]+)", spec.partition(":")[2]))
    try:
        median, p99 = float(fields["median"]), float(fields["p99"])
    except (KeyError, ValueError):
        raise ValueError(
            f"lengths {spec!r}: expected lognormal:median=M,p99=P"
        ) from None
    if not 0 < median < p99 or not math.isfinite(p99):
        raise ValueError(f"lengths {spec!r}: need 0 < median < p99")
    sigma = math.log(p99 / median) / _Z99
    return Mix(spec, lognormal=(math.log(median), sigma))


def parse(source: str | None, steps: int = STEPS) -> Mix | None:
    """The mix `source` names (module docstring); None for "max"."""
    if source in (None, "", DEFAULT):
        mix = from_file(PACKAGED)
        return dataclasses.replace(mix, name="Qwen2.5-Math on MATH (packaged)")
    if source == MAX:
        return None
    if source.startswith("lognormal:"):
        return from_lognormal(source)
    if os.path.isdir(source):
        return from_workdir(source, steps)
    if os.path.isfile(source):
        return from_file(source)
    raise ValueError(
        f"lengths {source!r}: not a file, a workdir, 'lognormal:median=M,p99=P' "
        "or 'max'"
    )


def draw(
    mix: Mix, rows: int, n: int, cap: int, seed: int = 0
) -> tuple[np.ndarray, int]:
    """(lengths [rows], how many were capped): a rollout's response lengths.

    Rows are prompt-major (row i*n + j is sample j of prompt i); a source
    with groups of n gives whole groups, any other one lengths one at a
    time; every draw with replacement from `default_rng(seed)`. Lengths
    above `cap` (max_new_tokens) become `cap`.
    """
    rng = np.random.default_rng(seed)
    if mix.lognormal is not None:
        mu, sigma = mix.lognormal
        raw = np.maximum(np.round(rng.lognormal(mu, sigma, rows)), 1)
    elif mix.groups is not None and all(len(g) == n for g in mix.groups):
        picked = rng.choice(len(mix.groups), -(-rows // n), replace=True)
        raw = np.concatenate([mix.groups[i] for i in picked])[:rows]
    else:
        raw = rng.choice(mix.lengths, rows, replace=True)
    raw = np.asarray(raw, np.int64)
    capped = int((raw > cap).sum())
    return np.minimum(raw, cap).astype(np.int32), capped
