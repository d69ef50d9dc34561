"""Measured over roofline: the factors that turn a plan's bounds into estimates.

A plan's times are rooflines, max(FLOPs / peak, bytes / bandwidth) per
program: lower bounds no real run meets. A calibration file, written by
`benchmarks/device.py` on a real accelerator, holds for each kind of work
the time it measured and the roofline the planner computes for the same
program on the same chip; their ratio scales the plan's bound of that kind
into an expected time. A calibration is only valid for the chip it was
measured on, and refuses any other.

The file (JSON):

    {"format": "rlvr_jax.calibration/1",
     "chip": "h100",                       # a planning.chips.CHIPS key
     "device_kind": "NVIDIA H100 80GB HBM3",
     "jax": "0.10.2",
     "kinds": {"sampling": {"measured_s": 2.1, "roofline_s": 1.4}, ...},
     "notes": ["..."]}

Kinds follow the step's parts (`planning.report.step_times`): "sampling"
(the weights' prepare and the rollout; evaluation is sampling too),
"logprobs" (the log-prob passes) and "update" (the learner's step; PPO's
critic, a value pass and an update, counts as an update).
"""

from __future__ import annotations

import dataclasses
import json
import math

FORMAT = "rlvr_jax.calibration/1"
KINDS = ("sampling", "logprobs", "update")
# The step's parts (report.step_times) -> the kind whose factor scales them.
PART_KINDS = {
    "sampling": "sampling",
    "evaluation": "sampling",
    "logprob_passes": "logprobs",
    "critic": "update",
    "update": "update",
}


class CalibrationError(ValueError):
    """A calibration file that cannot be used (malformed, or another chip's)."""


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Measured and roofline seconds per kind, on one chip.

    Attributes:
      chip: the `planning.chips.CHIPS` key it was measured on.
      device_kind: the device's own name (jax's `device_kind`).
      kinds: {kind: (measured_s, roofline_s)} for the kinds measured.
      jax: the jax version it was measured with.
      notes: what the measurement was (shapes, counts), for the reader.
    """

    chip: str
    device_kind: str
    kinds: dict[str, tuple[float, float]]
    jax: str = ""
    notes: tuple[str, ...] = ()

    def factor(self, kind: str) -> float | None:
        """Measured over roofline for `kind`; None when it was not measured."""
        if kind not in self.kinds:
            return None
        measured, roofline = self.kinds[kind]
        return measured / roofline

    def expected(self, times: dict[str, float]) -> dict[str, float | None]:
        """Each part of a step's roofline `times` scaled by its kind's factor
        (None for a part whose kind was not measured)."""
        out = {}
        for part, seconds in times.items():
            f = self.factor(PART_KINDS.get(part, part))
            out[part] = None if f is None else seconds * f
        return out

    def check_chip(self, chip: str) -> None:
        """Raises CalibrationError unless this was measured on `chip`."""
        if chip != self.chip:
            raise CalibrationError(
                f"the calibration was measured on {self.chip} "
                f"({self.device_kind}); this plan is for {chip}"
            )

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "chip": self.chip,
            "device_kind": self.device_kind,
            "jax": self.jax,
            "kinds": {
                k: {"measured_s": m, "roofline_s": r}
                for k, (m, r) in self.kinds.items()
            },
            "notes": list(self.notes),
        }


def _positive(value, where: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise CalibrationError(f"{where} must be a positive number, not {value!r}")
    return float(value)


def from_json(data) -> Calibration:
    """Parses a calibration file's JSON object (CalibrationError if malformed)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CalibrationError(f"not a calibration file (format is not {FORMAT!r})")
    for key in ("chip", "device_kind"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise CalibrationError(f"calibration {key!r} must be a non-empty string")
    raw = data.get("kinds")
    if not isinstance(raw, dict) or not raw:
        raise CalibrationError("calibration 'kinds' must name at least one kind")
    kinds = {}
    for kind, entry in raw.items():
        if kind not in KINDS:
            raise CalibrationError(
                f"unknown calibration kind {kind!r}; known: {', '.join(KINDS)}"
            )
        if not isinstance(entry, dict):
            raise CalibrationError(f"calibration kind {kind!r} must be an object")
        kinds[kind] = (
            _positive(entry.get("measured_s"), f"{kind}.measured_s"),
            _positive(entry.get("roofline_s"), f"{kind}.roofline_s"),
        )
    return Calibration(
        chip=data["chip"],
        device_kind=data["device_kind"],
        kinds=kinds,
        jax=str(data.get("jax", "")),
        notes=tuple(str(n) for n in data.get("notes", ())),
    )


def read(path: str) -> Calibration:
    """The calibration in file `path` (CalibrationError if unusable)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CalibrationError(f"cannot read calibration {path!r}: {e}") from e
    return from_json(data)


def write(calibration: Calibration, path: str) -> None:
    """Writes `calibration` to `path` (atomically: a crash leaves no half file)."""
    from rlvr_jax import io as io_lib

    io_lib.write_atomic(path, json.dumps(calibration.to_json(), indent=1) + "\n")
