"""Will it fit, how fast will it run: a run's programs compiled ahead of time.

    python -m rlvr_jax.plan --config=configs/pi1.py --topology=v5e:2x4 \\
        [--lengths=SOURCE] [--calibration=FILE] [--config.x=y ...] \\
        [--output=plan.json]

compiles, for a TPU topology (through `jax.experimental.topologies` and the
libtpu of the `[tpu]` extra, on any CPU host), for GPUs (`--topology=h100:8`,
`a100:8`, `h200:8`, `h100:2x8` for 2 nodes of 8: XLA:GPU through the CUDA
plugin of the `[cuda]` extra, for a target config shipped in
`planning/gpu_targets/`, on any CPU host) or for the local devices when
no topology is given, every program one RL step runs, with the run's real
shapes and shardings: the objects come from `rlvr_jax.build` (as `train.run`
makes them), the programs from the sampler's and learner's own `lower_*`
functions (`rlvr_jax.planning.programs`). It reads each program's memory,
FLOPs and HBM bytes, and reports what must coexist in each phase of a step
against the chip's HBM, a roofline time for each part, the step and run
time (PPO: the critic's value pass and update too, its train state resident
beside the actor's), and the largest rollout chunk and micro-batch that fit;
when the run does not fit, overrides under which it does
(`planning.search`). The method and its findings: docs/plan.md.

Times are rooflines: lower bounds. The step is priced twice from the same
programs: at a response-length mix (`--lengths`: by default the packaged
Qwen2.5-Math lengths; a lengths file, a run's workdir, a lognormal; see
`planning.lengths`), its rollout replayed through the sampler's scheduler
and its learner batch packed (`planning.mix`), and with every response at
max_new_tokens. `--calibration=FILE` (written by benchmarks/device.py on the
same chip) adds expected times beside the bounds (`planning.calibration`).
"""

from __future__ import annotations

import json
import sys

import jax

from rlvr_jax import build
from rlvr_jax.model import decoder
from rlvr_jax.planning import calibration as calibration_lib
from rlvr_jax.planning import chips, programs, report
from rlvr_jax.planning import lengths as lengths_lib
from rlvr_jax.planning import search as search_lib
from rlvr_jax.planning.chips import GB
from rlvr_jax.planning.report import Plan


def _log(verbose: bool, message: str) -> None:
    if verbose:
        print(message, file=sys.stderr, flush=True)


def plan(
    config,
    topology: str | None = None,
    *,
    model: decoder.ModelConfig | None = None,
    hbm_bytes: float | None = None,
    eval_examples: int | None = None,
    search: bool = True,
    costs: bool = True,
    verbose: bool = False,
    chip: chips.Chip | None = None,
    lengths: str | None = lengths_lib.DEFAULT,
    calibration: str | calibration_lib.Calibration | None = None,
    prompt_tokens: int | None = None,
) -> Plan:
    """Compiles `config`'s step for `topology` (or the local devices) and plans.

    Args:
      config: the experiment ConfigDict (as main.py gets it).
      topology: a TPU topology name ('v5e:2x4') or a GPU one ('h100:8',
        'h100:2x8': nodes × GPUs per node; `chips.parse_gpu_topology`);
        None plans for `jax.devices()` (an accelerator).
      model: replaces the config's model (tests).
      hbm_bytes: memory per chip to plan against (default: the chip's, or
        what the local device reports).
      eval_examples: examples per evaluation (default: from eval.path).
      search: when the run does not fit, look for overrides that do.
      costs: also compile the cost programs (FLOPs, bytes, times); without
        them the plan only answers whether it fits.
      verbose: log compile progress to stderr.
      chip: the chip figures to plan the local devices against (default:
        looked up from their device kind); with it, even CPU devices can be
        planned (benchmarks/device.py's tiny CPU mode).
      lengths: the response-length mix to also price the step at
        (`planning.lengths.parse`: "packaged" (default), a lengths file, a
        run's workdir, "lognormal:median=M,p99=P"; "max" or None: every
        response at max_new_tokens only). Needs `costs`.
      calibration: a calibration file (or `Calibration`) measured on this
        plan's chip: expected times beside the roofline.
      prompt_tokens: the prompts' real token count at the mix (default:
        the widest prompt bucket, an upper bound): the rollout's prompts
        pad to its bucket (slot caches) or take that many columns (pages),
        and the learner packs them at that length.

    Returns:
      the `Plan`.
    """
    notes = []
    # Bad sources fail before anything is compiled.
    mix = lengths_lib.parse(lengths) if costs else None
    if isinstance(calibration, str):
        calibration = calibration_lib.read(calibration)
    if topology:
        devices = chips.topology_devices(topology)
        chip = chip or chips.chip_for(topology.split(":")[0])
        name = topology
        if chips.is_gpu_topology(topology):
            notes += report.gpu_notes(*chips.parse_gpu_topology(topology)[1:])
    else:
        devices = jax.devices()
        if devices[0].platform == "cpu" and chip is None:
            raise ValueError("no accelerator here: pass a topology (e.g. v5e:2x4)")
        chip = chip or chips.chip_for(devices[0].device_kind)
        name = f"local:{len(devices)}x{devices[0].device_kind}"
        stats = devices[0].memory_stats() or {}
        if hbm_bytes is None and "bytes_limit" in stats:
            hbm_bytes = float(stats["bytes_limit"])
    if eval_examples is None:
        eval_examples, source = build.eval_example_count(config)
        notes.append(f"evaluation: {eval_examples} examples ({source})")
    if calibration is not None:
        calibration.check_chip(chip.name)
    hbm = float(hbm_bytes or chip.hbm_bytes)
    run = build.plan_run(config, devices, eval_examples, model, hbm)
    _log(verbose, f"planning {name}: mesh {dict(run.mesh.shape)}, {run.shapes}")
    if config.rollout.decode_weights == "auto":
        layout = "replicated" if run.decode_sharding is not None else "sharded"
        notes.append(f"rollout.decode_weights=auto: {layout} on this chip")
    if config.model.get("attention", "auto") == "auto":
        kernel = run.learner.attention_kernel
        notes.append(f"model.attention=auto: {kernel} for the learner on this chip")
    if run.critic is not None:
        notes.append(
            "PPO: the critic's train state "
            f"({programs.critic_state_bytes(run) / GB:.2f} GB per chip) is "
            "resident in every phase"
        )
    compiled = programs.compile_programs(run, chip, verbose, costs)
    for p in compiled:
        if p.oom:
            notes.append(
                f"{p.name}: the compiler ran out of HBM; it needs "
                f"{p.temp / GB:.1f} GB of temporaries"
            )
        if p.cost_note:
            notes.append(f"{p.name}: {p.cost_note}")
    times = report.step_times(run, compiled)
    initial_eval = 0.0
    if "eval_sample" in {p.name for p in compiled}:
        initial_eval = times["evaluation"] * config.eval.every
    result = Plan(
        topology=name,
        chip=chip,
        chips=len(devices),
        shapes=run.shapes,
        steps=config.train.steps,
        hbm_bytes_per_chip=hbm,
        programs=compiled,
        phases=report.resident_phases(run, compiled),
        times=times,
        run_seconds=config.train.steps * sum(times.values()) + initial_eval,
        notes=notes,
        overrides={},
        largest={},
        mfu=report.learner_mfu(run, result_program(compiled, "train_step"), chip)
        if costs
        else 0.0,
        decode_efficiency=(
            report.decode_efficiency(
                run, result_program(compiled, "sample.decode_step")
            )
            if costs
            else 0.0
        ),
        reference_on_host=bool(config.train.reference_on_host),
        attention_kernel=run.learner.attention_kernel,
        reference=run.reference,
        critic=run.critic is not None,
        calibration=calibration,
        platform=run.platform,
    )
    if mix is not None:
        drawn, capped = lengths_lib.draw(
            mix, run.shapes.responses, run.settings.n, run.settings.max_new_tokens
        )
        eval_drawn = None
        evals = [p for p in compiled if p.name == "eval_sample" and p.rollout]
        if evals:
            # One greedy response per problem, from the same source: an
            # evaluation's own lengths are not known before it runs.
            eval_drawn, _ = lengths_lib.draw(
                mix,
                evals[0].rollout.rows,
                1,
                run.eval_settings.max_new_tokens,
                seed=1,
            )
        result.mix = report.step_at_mix(
            run,
            compiled,
            chip,
            drawn,
            source=mix.name,
            steps=config.train.steps,
            initial_eval=initial_eval,
            capped=capped,
            eval_lengths_r=eval_drawn,
            prompt_tokens=prompt_tokens,
            buckets=tuple(config.data.prompt_buckets),
        )
    result.largest = search_lib.largest_sizes(run, result)
    if not result.fits and search:
        result.overrides = search_lib.fitting_overrides(
            result,
            get=lambda key: get(config, key),
            replan=lambda changes: plan(
                override(config, changes),
                topology,
                model=model,
                hbm_bytes=hbm,
                eval_examples=eval_examples,
                search=False,
                costs=False,
                chip=chip,
                lengths=None,
            ),
            log=lambda line: _log(verbose, line),
        )
    elif result.fits:
        result.overrides = {
            k: v for k, v in result.largest.items() if v != get(config, k)
        }
    return result


def result_program(compiled: list[programs.Program], name: str) -> programs.Program:
    return next(p for p in compiled if p.name == name)


def get(config, dotted: str):
    """The config value of a dotted key ("train.logits_chunk")."""
    section, field = dotted.split(".")
    return config[section][field]


def override(config, changes: dict):
    """A copy of `config` with dotted keys set."""
    c = config.copy_and_resolve_references()
    with c.unlocked():
        for dotted, value in changes.items():
            section, field = dotted.split(".")
            c[section][field] = value
    return c


# --------------------------------------------------------------------- cli
def main(argv) -> None:
    del argv
    if _TOPOLOGY.value:
        # Compile-only devices: nothing runs, so no accelerator is looked for
        # (the CUDA plugin, asked for a GPU on a host without one, fails to
        # load and can then describe no GPU topology).
        jax.config.update("jax_platforms", "cpu")
    config = _CONFIG.value
    try:  # a bad source is one line, before minutes of compiling
        lengths_lib.parse(_LENGTHS.value)
        if _CALIBRATION.value:
            calibration_lib.read(_CALIBRATION.value)
    except ValueError as e:
        sys.exit(f"error: {e}")
    result = plan(
        config,
        _TOPOLOGY.value,
        hbm_bytes=_HBM_GB.value * GB if _HBM_GB.value else None,
        eval_examples=_EVAL_EXAMPLES.value,
        search=_SEARCH.value,
        costs=_COSTS.value,
        verbose=True,
        lengths=_LENGTHS.value,
        calibration=_CALIBRATION.value,
        prompt_tokens=_PROMPT_TOKENS.value,
    )
    print(report.format_plan(result), flush=True)
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w") as f:
            json.dump(result.to_json(), f, indent=1)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file(
        "config", None, "Experiment config file (configs/*.py[:arg]).", lock_config=True
    )
    _TOPOLOGY = flags.DEFINE_string(
        "topology",
        None,
        "TPU topology, e.g. v5e:2x4, or GPUs (nodes x GPUs per node), e.g. "
        "h100:8, a100:8, h200:8, h100:2x8; default: the local devices.",
    )
    _OUTPUT = flags.DEFINE_string("output", None, "Also write the plan as JSON here.")
    _HBM_GB = flags.DEFINE_float(
        "hbm_gb", None, "Plan against this many GB per chip (default: the chip's)."
    )
    _EVAL_EXAMPLES = flags.DEFINE_integer(
        "eval_examples", None, "Examples per evaluation (default: from eval.path)."
    )
    _SEARCH = flags.DEFINE_bool(
        "search", True, "When it does not fit, re-plan to find overrides that do."
    )
    _COSTS = flags.DEFINE_bool(
        "costs", True, "Also compile the cost programs (FLOPs, bytes, times)."
    )
    _LENGTHS = flags.DEFINE_string(
        "lengths",
        lengths_lib.DEFAULT,
        "Response-length mix to price the step at: 'packaged' (measured "
        "Qwen2.5-Math lengths), a JSON file of token counts, a run's workdir, "
        "'lognormal:median=M,p99=P', or 'max' (every response at max_new_tokens).",
    )
    _PROMPT_TOKENS = flags.DEFINE_integer(
        "prompt_tokens",
        None,
        "The prompts' real token count, for the step at the mix (default: "
        "the widest prompt bucket, an upper bound; π1's prompt is 140).",
    )
    _CALIBRATION = flags.DEFINE_string(
        "calibration",
        None,
        "Calibration file measured on this chip (benchmarks/device.py): adds "
        "expected times beside the roofline.",
    )
    flags.mark_flags_as_required(["config"])
    app.run(main)
