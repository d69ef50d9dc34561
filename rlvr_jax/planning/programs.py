"""The programs one RL step runs, compiled ahead of time and priced.

For a run's objects (`Run`, made by `rlvr_jax.build.plan_run` from the
experiment config) on a mesh over real or compile-only devices, this lowers
the programs the components expose (the sampler's `lower_prepare`,
`lower_rollout`, `lower_decode_step`; the learner's `lower_logprobs`,
`lower_train_step`, `lower_micro_step`, `lower_update`; PPO's critic's
`lower_values`, `lower_train_step`, `lower_micro_step`, `lower_update`): the
functions the run itself calls, with its shapes and shardings, so a plan
cannot drift from the run. The programs, in the order a step runs them:

  prepare        the sampler's weights (cast, laid out) from the train params
  sample         the step's rollout: every prompt prefilled once, then
                 continuous batching through rollout.chunk_size slots
  decode_step    one iteration of that loop (its cost is counted per step)
  ref_logprobs   the frozen reference policy's log-probs of the step's batch
  critic_values  PPO: the critic's values of the step's batch (micro-batched)
  old_logprobs   PPO with algorithm.kl_in_reward: the policy's own log-probs
                 of the batch (π_old of the KL penalty)
  critic_step    PPO: one critic update on the batch (micro-batched, its
                 state donated)
  train_step     one optimizer update on the step's batch (micro-batched)
  eval_sample    prefill + greedy decode of one evaluation chunk

A PPO run (`Run.critic`) keeps the critic's train state (fp32 params and
AdamW moments, sharded like the actor's) on the chips the whole step.

Each compiled program gives its memory per chip (`memory_analysis()`), its
FLOPs (`cost_analysis()`, plus the kernels XLA has no count for) and the HBM
bytes it moves (`planning.hlo`), and from those a roofline time.

Trip counts. XLA's cost analysis counts a `while`/`scan` body once, whatever
its trip count. Costs are therefore assembled from programs without the
step's outer loops: the layer scan (and the attention's query-block loop in
it) is unrolled in copies of a program at depth 1 and 2 (`compile.depth_cost`);
the learner's log-prob head runs as one chunk in those copies (same FLOPs as
the chunked scan; `micro_batches_cost` when such a copy does not fit a
chip); a micro-batched program is costed as M scan bodies plus
the optimizer update (the critic's train step too; its value pass as M
micro-batches, like the reference pass); the decode loop as the sample program plus the rest of
its decode steps, counted by replaying the rollout through the sampler's
scheduler (`planning.mix`): with every response at `max_new_tokens`,
ceil(R / S) × (max_new_tokens - 1) steps, each attending over the cache up
to its longest live row; a decode step's cost is affine in those columns
(compiled at two widths). The programs are compiled at the widest shapes:
every response at `max_new_tokens`, the learner batch the widest one
(largest prompt bucket + max_new_tokens). A step at a real length mix is
priced from the same programs (`planning.mix`, `rlvr_jax.plan`).
Loops that remain in those programs (the sampler's row-by-row cache writes)
are counted by their trip count in the bytes, once in the FLOPs.

On TPU the cost programs are compiled without windowed-einsum loops
(`compile.cost_run`). The learner's flash attention kernel brings its
forward's FLOPs to XLA as an estimate; its backward kernels have none, so the
planner adds theirs (`hlo.kernel_flops`).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any

import jax

from rlvr_jax import learner, sharding
from rlvr_jax.learner import critic as critic_lib
from rlvr_jax.learner import step as step_lib
from rlvr_jax.model import decoder
from rlvr_jax.planning import compile as compile_lib
from rlvr_jax.planning import layouts, mix
from rlvr_jax.planning.chips import Chip
from rlvr_jax.rollout import engine, paged_engine, sampling


@dataclasses.dataclass(frozen=True)
class StepShapes:
    """The sizes one RL step runs at (worst case: every response full length).

    Attributes:
      responses: rows of the step's rollout (train.batch_size × rollout.n).
      sample: the step's rollout call (`engine.rollout_shape`).
      new_tokens: rollout.max_new_tokens.
      learner: (shape, dtype) of each array of the widest learner batch, one
        full-length sequence per row (`packing.abstract_batch`).
      micro_batch: rows per gradient-accumulation slice, as the learner
        splits the widest batch.
      eval: one in-loop evaluation call (None: no evaluation); eval_calls:
        calls per evaluation (its prompts in chunks of eval.chunk_size);
        eval_new_tokens: its max_new_tokens.
    """

    responses: int
    sample: engine.RolloutShape
    new_tokens: int
    learner: dict
    micro_batch: int
    eval: engine.RolloutShape | None
    eval_calls: int
    eval_new_tokens: int

    @property
    def prompt_width(self) -> int:
        return self.sample.prompt_width

    @property
    def learner_rows(self) -> int:
        return self.learner["tokens"][0][0]

    @property
    def learner_width(self) -> int:
        return self.learner["tokens"][0][1]


@dataclasses.dataclass
class Run:
    """The run's objects the programs are built from (`build.plan_run`).

    Attributes:
      model: the architecture.
      mesh: the device mesh (real or compile-only devices).
      learner: the learner's settings; tx: the optimizer.
      settings, eval_settings: training and in-loop evaluation sampling.
      shapes: the step's sizes.
      decode_sharding: placement of the packed decode weights (None: the
        compiler follows the params).
      reference: the KL reference policy is kept (loss.kl_coef != 0).
      reference_on_host: it lives in host memory between its passes.
      eval_every: steps between evaluations (0: none).
      token_budget: the learner's micro-batch is a token budget set by the
        config (train.max_tokens_per_micro_batch), not a row count.
      compiler_options: XLA options every program is compiled with.
      critic: PPO's critic settings (`build.critic_config`); None: no critic
        (GRPO). critic_tx: its optimizer (`build.critic_optimizer`).
      kl_in_reward: PPO's KL penalty is in the reward
        (algorithm.kl_in_reward): the policy's own log-prob pass runs too.
      decode_mesh: the sampler's own mesh over the same devices (None: it
        runs on `mesh`); decode_tensor: its tensor size T (1: data-parallel
        replicas). See `rlvr_jax.build.decode_layout`.
    """

    model: decoder.ModelConfig
    mesh: Any
    learner: learner.LearnerConfig
    tx: Any
    settings: sampling.SamplingSettings
    eval_settings: sampling.SamplingSettings
    shapes: StepShapes
    decode_sharding: Any
    reference: bool = True
    reference_on_host: bool = False
    eval_every: int = 0
    token_budget: bool = False
    compiler_options: dict | None = None
    critic: critic_lib.CriticConfig | None = None
    critic_tx: Any = None
    kl_in_reward: bool = False
    decode_mesh: Any = None
    decode_tensor: int = 1

    @property
    def platform(self) -> str:
        return self.mesh.devices.flat[0].platform

    @property
    def sampler_mesh(self) -> Any:
        """The mesh the sampler decodes on (`decode_mesh`, else `mesh`)."""
        return self.mesh if self.decode_mesh is None else self.decode_mesh


@dataclasses.dataclass
class Program:
    """One compiled program's per-chip figures.

    Attributes:
      name: see the module docstring.
      calls: times it runs per RL step (a fraction for evaluation).
      arguments, outputs, alias, temp: bytes per chip (`memory_analysis`);
        alias: output bytes that reuse donated argument buffers.
      flops, hbm_bytes: per call, loop trip counts included.
      seconds: roofline time per call, max(flops / peak, bytes / bandwidth).
      resident_args: bytes of the arguments that are resident anyway
        (train state, the critic's, reference weights), not added again to
        the phase.
      cost_note: how flops and hbm_bytes were counted when not from the
        run's own shapes (`micro_batches_cost`).
      fixed_flops, fixed_bytes: the part of flops and hbm_bytes that does
        not grow with the batch's rows (a train step's optimizer update).
      rollout: a sampler program's cost by parts, to price it at other
        response lengths (`mix.RolloutCost`; None for other programs).
      layouts: the training rollout's decode step under each decode layout
        (`layouts.compare`; on "sample.decode_step" when costed, else None).
    """

    name: str
    calls: float
    arguments: int
    outputs: int
    alias: int
    temp: int
    flops: float = 0.0
    hbm_bytes: float = 0.0
    seconds: float = 0.0
    resident_args: int = 0
    oom: bool = False  # the compiler refused it: temp is what it needed
    cost_note: str = ""  # how its cost was counted, when not as it runs
    fixed_flops: float = 0.0
    fixed_bytes: float = 0.0
    rollout: mix.RolloutCost | None = None
    layouts: list | None = None

    @property
    def total(self) -> int:
        return self.arguments + self.outputs + self.temp - self.alias


def _with_shardings(tree, shardings):
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        tree,
        shardings,
    )


def abstract_params(run: Run, model: decoder.ModelConfig):
    """Sharded ShapeDtypeStructs of the params."""
    params = decoder.abstract_params(model)
    return _with_shardings(params, sharding.tree_shardings(params, run.mesh))


def reference_params(run: Run, model: decoder.ModelConfig):
    """The reference policy's weights as train.run keeps them (None: no KL)."""
    if not run.reference:
        return None
    params = abstract_params(run, model)
    cast = jax.eval_shape(lambda p: sampling.compute_dtype_params(model, p), params)
    return _with_shardings(cast, jax.tree.map(lambda a: a.sharding, params))


def critic_state(run: Run):
    """The critic's train state, abstract and sharded (None: no critic)."""
    if run.critic is None:
        return None
    return critic_lib.sharded_abstract_state(run.model, run.critic_tx, run.mesh)


def critic_state_bytes(run: Run) -> int:
    """Bytes per chip of the critic's train state (0: no critic)."""
    state = critic_state(run)
    return 0 if state is None else sharding.bytes_per_device(state)


def learner_batch(run: Run, rows: int | None = None, ref_logp: bool = False) -> dict:
    """The widest learner batch, abstract and placed (`rows` rows, default
    all of them), with `ref_logp` when the reference pass fills it."""
    shapes = run.shapes.learner
    if rows is not None:
        shapes = {k: ((rows, *s[1:]), d) for k, (s, d) in shapes.items()}
    return step_lib.abstract_batch(shapes, run.mesh, ref_logp)


# --------------------------------------------------------------- programs
def compile_prepare(run: Run, model: decoder.ModelConfig):
    """The sampler's decode weights from the train params (`sampling.prepare`)."""
    lowered = sampling.lower_prepare(
        model,
        abstract_params(run, model),
        decode_sharding=run.decode_sharding,
        platform=run.platform,
    )
    return compile_lib.compile_or_oom(lowered, run)


def sampler_weights(run: Run, model: decoder.ModelConfig, prepared):
    """Abstract `prepare` outputs, placed as the compiler placed them."""
    if isinstance(prepared, compile_lib.OutOfMemory):
        # Refused: place them as asked (replicated unless the compiler chose).
        shardings = run.decode_sharding or sharding.replicated(run.sampler_mesh)
    else:
        shardings = prepared.output_shardings
    return sampling.abstract_weights(
        model, abstract_params(run, model), shardings, run.platform
    )


def compile_sample(run, model, weights, shape: engine.RolloutShape, settings):
    """A rollout of `shape` (`engine.lower_rollout`)."""
    lowered = engine.lower_rollout(model, weights, shape, settings, run.sampler_mesh)
    return compile_lib.compile_or_oom(lowered, run)


def mean_fill(run: Run, settings) -> int:
    """Cache slots a decode step attends over, averaged over a rollout whose
    responses all run to max_new_tokens: the fill grows by one a step, from
    the prompt width to the whole cache."""
    return run.shapes.prompt_width + -(-settings.max_new_tokens // 2)


def compile_decode_step(run, model, weights, shape, settings, width=None):
    """One decode step of `shape.slots` slots (`engine.lower_decode_step`)."""
    lowered = engine.lower_decode_step(
        model, weights.decode, shape, settings, run.sampler_mesh, width
    )
    return compile_lib.compile_or_oom(lowered, run)


def compile_ref_logprobs(run, model, learner_config, rows: int | None = None):
    """The reference policy's log-probs of a `rows`-row learner batch."""
    lowered = step_lib.lower_logprobs(
        model,
        learner_config,
        run.mesh,
        reference_params(run, model),
        learner_batch(run, rows),
    )
    return compile_lib.compile_or_oom(lowered, run)


def compile_train_step(run, model, learner_config, rows: int | None = None):
    """One optimizer update on a `rows`-row learner batch."""
    lowered = step_lib.lower_train_step(
        model, learner_config, run.tx, run.mesh, learner_batch(run, rows, run.reference)
    )
    return compile_lib.compile_or_oom(lowered, run)


def compile_micro_step(run, model, learner_config, rows: int):
    """The body of the micro-batch scan: one micro-batch's grads, accumulated."""
    lowered = step_lib.lower_micro_step(
        model,
        learner_config,
        run.mesh,
        abstract_params(run, model),
        learner_batch(run, rows, run.reference),
    )
    return compile_lib.compile_or_oom(lowered, run)


def compile_update(run, model):
    """The train step's optimizer update on accumulated grads."""
    lowered = step_lib.lower_update(model, run.tx, run.mesh)
    return compile_lib.compile_or_oom(lowered, run)


def compile_old_logprobs(run, model, learner_config, rows: int | None = None):
    """The policy's own log-probs of a `rows`-row learner batch (its fp32
    train params: PPO's π_old with the KL in the reward)."""
    lowered = step_lib.lower_logprobs(
        model,
        learner_config,
        run.mesh,
        abstract_params(run, model),
        learner_batch(run, rows),
    )
    return compile_lib.compile_or_oom(lowered, run)


def critic_batch(run: Run, rows: int | None = None) -> dict:
    """The critic's batch beside the widest learner batch: its inputs and
    its GAE targets (`critic.abstract_batch`)."""
    return critic_lib.abstract_batch(learner_batch(run, rows))


def compile_critic_values(run, model, rows: int | None = None):
    """The critic's values of a `rows`-row learner batch (`critic.jit_values`)."""
    lowered = critic_lib.lower_values(
        model, run.critic, run.mesh, learner_batch(run, rows)
    )
    return compile_lib.compile_or_oom(lowered, run)


def compile_critic_step(run, model, rows: int | None = None):
    """One critic update on a `rows`-row batch (`critic.jit_train_step`)."""
    lowered = critic_lib.lower_train_step(
        model, run.critic, run.critic_tx, run.mesh, critic_batch(run, rows)
    )
    return compile_lib.compile_or_oom(lowered, run)


def compile_critic_micro_step(run, model, rows: int):
    """The body of the critic's micro-batch scan: one micro-batch's grads."""
    lowered = critic_lib.lower_micro_step(
        model, run.critic, run.mesh, critic_batch(run, rows)
    )
    return compile_lib.compile_or_oom(lowered, run)


def compile_critic_update(run, model):
    """The critic step's optimizer update on accumulated grads."""
    lowered = critic_lib.lower_update(model, run.critic_tx, run.mesh)
    return compile_lib.compile_or_oom(lowered, run)


# ------------------------------------------------------------------ costs
def roofline(flops: float, hbm_bytes: float, chip: Chip) -> float:
    """Seconds at best: compute and memory traffic overlap perfectly, each at
    the chip's peak (a lower bound no run meets)."""
    return max(flops / chip.bf16_flops_per_s, hbm_bytes / chip.hbm_bytes_per_s)


def _program(
    name, compiled, calls, flops, hbm_bytes, chip, resident_args=0, cost_note=""
):
    seconds = roofline(flops, hbm_bytes, chip)
    return Program(
        name=name,
        calls=calls,
        flops=flops,
        hbm_bytes=hbm_bytes,
        seconds=seconds,
        resident_args=resident_args,
        cost_note=cost_note,
        oom=isinstance(compiled, compile_lib.OutOfMemory),
        **compile_lib.memory(compiled),
    )


def _log(verbose: bool, message: str) -> None:
    if verbose:
        print(message, file=sys.stderr, flush=True)


PAGED_LINE_BLOCKS = (2, 8)  # attention blocks of the paged decode-step line


def line_widths(run: Run, shape, settings) -> tuple[int, int]:
    """The two cache widths the decode step's line is compiled at: the mean
    fill of an all-at-max rollout and the whole cache; for a paged cache
    (whose slots, every row of a rollout say, would not fit as slot caches
    of the widest row) two narrow widths, 2 and 8 attention blocks (a
    step's cost is affine in its width)."""
    full = shape.prompt_width + settings.max_new_tokens
    if shape.paging is None:
        return mean_fill(run, settings), full
    a, b = (min(full, k * engine.ATTENTION_BLOCK) for k in PAGED_LINE_BLOCKS)
    return a, b


def sample_cost(run: Run, shape, settings, weights, rows: int | None = None) -> tuple:
    """(FLOPs, bytes, decode step program, its (FLOPs, bytes), the rollout's
    `mix.RolloutCost`) of one rollout, its loop counted, every response at
    max_new_tokens.

    The rollout program at depth 1 and 2 counts the prefill, one refill and
    one decode step. With every response full length (the worst case), the
    R = prompts × n rows pass through the S slots in ceil(R / S) waves of
    `max_new_tokens - 1` decode steps each (a row's first token comes from
    the prefill); the scheduler's replay (`mix.decoding`) counts them and
    the cache columns each step attends over (the run's loop reads the
    cache only up to the longest live row, in whole attention blocks). All
    but one of those steps are added from the decode step compiled at the
    mean fill (`mean_fill`) and at the whole cache: its cost is affine in
    the columns it reads, so the steps cost their count × the step at their
    mean width. Refills (every `engine.REFILL_EVERY` steps, a prompt-width
    copy of each slot's cache) are counted once. `rows`: the rows decoded
    (default: every prompt row of `shape`, padding included).
    """
    model = run.model

    def build(m):
        w = sampler_weights(run, m, compile_prepare(run, m))
        return compile_sample(run, m, w, shape, settings)

    flops, nbytes = compile_lib.depth_cost(build, model)
    fill = mean_fill(run, settings)
    full = shape.prompt_width + settings.max_new_tokens
    if shape.paging is not None:
        # A paged cache's slots (every row of a rollout, say) would not fit
        # as slot caches of the widest row: the line is taken through two
        # narrow widths (a step's cost is affine in its width).
        fill, full = (min(full, k * engine.ATTENTION_BLOCK) for k in PAGED_LINE_BLOCKS)
    step = compile_decode_step(run, model, weights, shape, settings, fill)
    step_flops, step_bytes = compile_lib.cost(step)
    wide = compile_decode_step(run, model, weights, shape, settings, full)
    shards = sharding.batch_divisor(run.sampler_mesh)
    kernel = False
    if shape.paging is not None:
        manual = paged_engine.runs_per_device(
            shards, sharding.batch_sharding(run.sampler_mesh), weights.decode
        )
        kind = paged_engine.attention_kind(
            shape.paging, model, settings, run.platform, manual
        )
        kernel = kind == "pallas"
    rollout = mix.RolloutCost(
        flops=flops,
        nbytes=nbytes,
        line=mix.Line(fill, step_flops, step_bytes, full, *compile_lib.cost(wide)),
        rows=rows or shape.prompts * settings.n,
        slots=shape.slots,
        prompt_width=shape.prompt_width,
        new_tokens=settings.max_new_tokens,
        platform=run.platform,
        paging=shape.paging,
        shards=shards,
        kernel=kernel,
    )
    total_flops, total_bytes = rollout.at(rollout.replay())
    return total_flops, total_bytes, step, (step_flops, step_bytes), rollout


def _cost_learner(run: Run) -> learner.LearnerConfig:
    # One log-prob chunk (no scan, same FLOPs) for the cost programs.
    return run.learner.replace(logits_chunk=run.shapes.learner_width)


def micro_batches_cost(run: Run, build) -> tuple[float, float, str]:
    """(FLOPs, bytes, note) of a step's micro-batches of `build(model, rows)`.

    Costed at the run's micro-batch, by depth; when that cost program does
    not fit one chip (its head's one chunk of [rows, width, vocab] fp32
    logits is far larger than the run's chunks at 8k-token rows), at the
    largest halving that does, times the
    micro-batches of that size: the FLOPs are the same, the bytes an upper
    bound (each costed micro-batch reads the weights again), which `note`
    says ("" when the run's micro-batch was costed).
    """
    sh = run.shapes
    rows, divisor = sh.micro_batch, sharding.batch_divisor(run.mesh)
    while True:
        try:
            flops, nbytes = compile_lib.depth_cost(
                lambda m, r=rows: build(m, r), run.model
            )
            break
        except compile_lib.CostOutOfMemory:
            if (rows // 2) % divisor or rows // 2 < divisor:
                raise
            rows //= 2
    micro = sh.learner_rows // rows
    note = ""
    if rows != sh.micro_batch:
        note = (
            f"costed as {micro} micro-batches of {rows} rows (the cost program "
            f"of {sh.micro_batch} does not fit one chip): FLOPs exact, bytes an "
            "upper bound"
        )
    return micro * flops, micro * nbytes, note


def ref_logprobs_cost(run: Run) -> tuple[float, float, str]:
    """(FLOPs, bytes, note) of the reference pass: its micro-batches."""
    return micro_batches_cost(
        run, lambda m, rows: compile_ref_logprobs(run, m, _cost_learner(run), rows)
    )


def train_step_parts(run: Run) -> tuple[float, float, str, tuple[float, float]]:
    """(FLOPs, bytes, note, the update's (FLOPs, bytes)) of the train step:
    M micro-batch scan bodies and the optimizer update, each costed by depth
    (the step is exactly those: the whole program would count its scan body
    once); the first two include the update."""
    flops, nbytes, note = micro_batches_cost(
        run, lambda m, rows: compile_micro_step(run, m, _cost_learner(run), rows)
    )
    update = compile_lib.depth_cost(lambda m: compile_update(run, m), run.model)
    return flops + update[0], nbytes + update[1], note, update


def train_step_cost(run: Run) -> tuple[float, float, str]:
    """(FLOPs, bytes, note) of the train step (`train_step_parts`)."""
    return train_step_parts(run)[:3]


def old_logprobs_cost(run: Run) -> tuple[float, float, str]:
    """(FLOPs, bytes, note) of the policy's own log-prob pass."""
    return micro_batches_cost(
        run, lambda m, rows: compile_old_logprobs(run, m, _cost_learner(run), rows)
    )


def critic_values_cost(run: Run) -> tuple[float, float, str]:
    """(FLOPs, bytes, note) of the critic's value pass: its micro-batches."""
    return micro_batches_cost(run, lambda m, rows: compile_critic_values(run, m, rows))


def critic_step_parts(run: Run) -> tuple[float, float, str, tuple[float, float]]:
    """(FLOPs, bytes, note, the update's (FLOPs, bytes)) of the critic's train
    step, as `train_step_parts`: M micro-batch scan bodies and its optimizer
    update, each by depth."""
    flops, nbytes, note = micro_batches_cost(
        run, lambda m, rows: compile_critic_micro_step(run, m, rows)
    )
    update = compile_lib.depth_cost(lambda m: compile_critic_update(run, m), run.model)
    return flops + update[0], nbytes + update[1], note, update


def critic_step_cost(run: Run) -> tuple[float, float, str]:
    """(FLOPs, bytes, note) of the critic's train step (`critic_step_parts`)."""
    return critic_step_parts(run)[:3]


def compile_programs(
    run: Run, chip: Chip, verbose: bool = False, costs: bool = True
) -> list[Program]:
    """Compiles the step's programs and costs them (see the module docstring).

    With `costs=False` only the full programs are compiled (their memory is
    all a fit check needs); FLOPs, bytes and times are then 0.
    """
    model, learner_config, sh = run.model, run.learner, run.shapes
    state_bytes = sharding.bytes_per_device(
        learner.sharded_abstract_state(model, run.tx, run.mesh)
    )
    ref = reference_params(run, model)
    ref_bytes = 0 if ref is None else sharding.bytes_per_device(ref)
    params_bytes = sharding.bytes_per_device(abstract_params(run, model))
    programs = []

    def timed(name, fn, *args):
        t0 = time.time()
        out = fn(*args)
        _log(verbose, f"  {name}: {time.time() - t0:.0f} s")
        return out

    def priced(name, fn, *args):
        return timed(f"{name} costs", fn, *args) if costs else (0.0, 0.0, "")

    def priced_parts(name, fn, *args):
        # (flops, bytes, note, the update's (flops, bytes)).
        if not costs:
            return 0.0, 0.0, "", (0.0, 0.0)
        return timed(f"{name} costs", fn, *args)

    costed = compile_lib.cost_run(run)

    # ---- sampler: weights, then the step's rollout (its loop counted per step).
    prepared = timed("prepare", compile_prepare, run, model)
    weights = sampler_weights(run, model, prepared)
    prepare_cost = compile_lib.cost(prepared) if costs else (0.0, 0.0)
    programs.append(_program("prepare", prepared, 1, *prepare_cost, chip, params_bytes))

    def sampler_programs(name, shape, settings, calls, rows=None):
        full = timed(name, compile_sample, run, model, weights, shape, settings)
        if not costs:
            return [_program(name, full, calls, 0.0, 0.0, chip)]
        flops, nbytes, step, step_cost, rollout = timed(
            f"{name} costs", sample_cost, costed, shape, settings, weights, rows
        )
        decode = _program(f"{name}.decode_step", step, 0, *step_cost, chip)
        if name == "sample":  # the training rollout's decode layouts
            decode.layouts = timed(
                "decode layouts",
                layouts.compare,
                costed,
                chip,
                line_widths(run, shape, settings)[0],
            )
        program = _program(name, full, calls, flops, nbytes, chip)
        program.rollout = rollout
        return [program, decode]

    # One rollout per step: every prompt prefilled, rollout.chunk_size slots.
    programs += sampler_programs("sample", sh.sample, run.settings, 1, sh.responses)

    # ---- learner: reference log-probs, train step (both micro-batched).
    if ref is not None:
        full = timed("ref_logprobs", compile_ref_logprobs, run, model, learner_config)
        flops, nbytes, note = priced("ref_logprobs", ref_logprobs_cost, costed)
        programs.append(
            _program("ref_logprobs", full, 1, flops, nbytes, chip, ref_bytes, note)
        )

    # ---- PPO: the critic's values, (π_old's log-probs,) the critic's update.
    if run.critic is not None:
        critic = critic_state(run)
        full = timed("critic_values", compile_critic_values, run, model)
        flops, nbytes, note = priced("critic_values", critic_values_cost, costed)
        # Its params are the critic state's, resident anyway.
        critic_params = sharding.bytes_per_device(critic.params)
        programs.append(
            _program("critic_values", full, 1, flops, nbytes, chip, critic_params, note)
        )
        if run.kl_in_reward:
            full = timed(
                "old_logprobs", compile_old_logprobs, run, model, learner_config
            )
            flops, nbytes, note = priced("old_logprobs", old_logprobs_cost, costed)
            programs.append(
                _program(
                    "old_logprobs", full, 1, flops, nbytes, chip, params_bytes, note
                )
            )
        full = timed("critic_step", compile_critic_step, run, model)
        flops, nbytes, note, update = priced_parts(
            "critic_step", critic_step_parts, costed
        )
        # Donated like the actor's: its outputs alias the resident state.
        programs.append(
            _program(
                "critic_step",
                full,
                1,
                flops,
                nbytes,
                chip,
                sharding.bytes_per_device(critic),
                note,
            )
        )
        programs[-1].fixed_flops, programs[-1].fixed_bytes = update

    full = timed("train_step", compile_train_step, run, model, learner_config)
    flops, nbytes, note, update = priced_parts("train_step", train_step_parts, costed)
    # The state is donated: the program's outputs alias it.
    programs.append(
        _program("train_step", full, 1, flops, nbytes, chip, state_bytes, note)
    )
    programs[-1].fixed_flops, programs[-1].fixed_bytes = update

    # ---- evaluation: greedy, one response per prompt, in chunks.
    if sh.eval is not None and run.eval_every:
        calls = sh.eval_calls / run.eval_every
        programs += sampler_programs("eval_sample", sh.eval, run.eval_settings, calls)
    for p in programs:
        if p.name in ("sample", "eval_sample"):
            # The prefill reads the train params (resident); the packed
            # weights are the rollout's own.
            p.resident_args = params_bytes
    return programs
