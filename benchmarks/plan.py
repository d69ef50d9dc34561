"""The π1 run's estimated speed on TPU slices, from programs compiled for them.

For each topology, compiles the run's programs with `rlvr_jax.plan` (on this
CPU host, through libtpu) and prints three figures:

  step time       estimated seconds of one RL step (roofline of each program,
                  every response at max_new_tokens; evaluation amortised)
  decode eff.     HBM-roofline efficiency of decoding: the bytes a decode step
                  must read (the compute-dtype weights once, this chip's KV
                  cache filled to the average length of a full rollout) over
                  the HBM bytes the compiled step moves (`planning.hlo.hbm_bytes`,
                  counted from its HLO; goal: >= 60%)
  learner MFU     model FLOPs (6·N·tokens + attention) of the train step over
                  its roofline time × the chips' bf16 peak

    python benchmarks/plan.py                          # v5e:2x4 and v6e:2x4
    python benchmarks/plan.py --topology v4:2x2x1
    python benchmarks/plan.py --topology v5e:2x4 --widths 2048 4096

`--widths` instead costs one learner micro-step (the plan's depth-1/2 cost
programs) at each learner width T (prompt bucket + max_new_tokens), with
each learner attention (`--attention`, default `xla flash`: the einsum
blocks against the flash kernel, the baseline and the kernel in one run),
and fits its HBM bytes as a·T + b·T²: the share of b·T² is the traffic
that grows with the sequence squared (attention's score blocks, which the
kernel keeps on chip), when the two widths allow such a split (the einsum
path's bytes grow faster than T² from 2,048 to 4,096 columns). It
compiles as the plan's cost programs do (`planning.compile.cost_run`: no
windowed-einsum loops).

These are estimates from the compiler's cost model, not measurements: a
device run (`benchmarks/sampler.py`, `benchmarks/learner.py`) says what a
chip really does.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile-only TPU devices

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import pi1  # noqa: E402
from rlvr_jax import build  # noqa: E402
from rlvr_jax import plan as plan_lib  # noqa: E402
from rlvr_jax.planning import chips, programs, report  # noqa: E402
from rlvr_jax.planning import compile as compile_lib  # noqa: E402


def micro_step_by_width(topology: str, widths: list[int], attention: str) -> None:
    """FLOPs and HBM bytes of one learner micro-step per chip, by width."""
    devices = chips.topology_devices(topology)
    chip = chips.chip_for(topology.split(":")[0])
    costs = []
    print(f"{topology}, model.attention={attention}:")
    for width in widths:
        config = pi1.get_config()
        config.model.attention = attention
        config.rollout.max_new_tokens = width - max(config.data.prompt_buckets)
        run = compile_lib.cost_run(build.plan_run(config, devices, 500))
        rows = run.shapes.micro_batch
        flops, nbytes = compile_lib.depth_cost(
            lambda m, run=run, rows=rows: programs.compile_micro_step(
                run, m, run.learner.replace(logits_chunk=run.shapes.learner_width), rows
            ),
            run.model,
        )
        costs.append((width, flops, nbytes))
        print(
            f"T={width}: {rows} rows, {flops / 1e12:.2f} TFLOP and "
            f"{nbytes / 1e9:.1f} GB per chip per micro-step; roofline "
            f"{flops / chip.bf16_flops_per_s:.3f} s FLOPs, {nbytes / chip.hbm_bytes_per_s:.3f} s bytes",
            flush=True,
        )
    if len(costs) >= 2:
        (t1, _, b1), (t2, _, b2) = costs[0], costs[-1]
        # b = a·T + c·T² through the two widths.
        c = (b2 / t2 - b1 / t1) / (t2 - t1)
        a = b1 / t1 - c * t1
        if a < 0 or c < 0:  # no such split: a negative part is no traffic
            print(
                f"bytes x{b2 / b1:.2f} for x{t2 / t1:.2f} columns: they do not "
                "split into non-negative parts a·T + b·T²"
            )
            return
        for t, _, b in costs:
            print(
                f"T={t}: {100 * c * t * t / b:.0f}% of the bytes grow with T² "
                f"({c * t * t / 1e9:.1f} GB), {a * t / 1e9:.1f} GB with T"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topology", nargs="+", default=["v5e:2x4", "v6e:2x4"])
    parser.add_argument("--widths", nargs="+", type=int, default=None)
    parser.add_argument(
        "--attention", nargs="+", default=["xla", "flash"], help="with --widths"
    )
    args = parser.parse_args()
    if args.widths:
        for topology in args.topology:
            for attention in args.attention:
                micro_step_by_width(topology, args.widths, attention)
        return
    rows = []
    for topology in args.topology:
        p = plan_lib.plan(pi1.get_config(), topology, search=False, verbose=True)
        rows.append((topology, p))
        print(report.format_plan(p), flush=True)
    print()
    print(
        f"{'topology':<10}{'fits':<6}{'peak GB':>9}{'step s':>9}"
        f"{'decode eff.':>13}{'learner MFU':>13}"
    )
    for topology, p in rows:
        decode = f"{100 * p.decode_efficiency:.0f}%"
        print(
            f"{topology:<10}{'yes' if p.fits else 'no':<6}"
            f"{p.peak_bytes_per_chip / 1e9:9.2f}{p.step_seconds:9.1f}"
            f"{decode:>13}{100 * p.mfu:12.0f}%"
        )


if __name__ == "__main__":
    main()
