"""The learner step: micro-batched gradients, the train state and the jitted
programs (the train step and the log-prob pass).

`train_step(state, batch)` is one pure, donated optimizer update on one
mini-batch: the policy loss (`rlvr_jax.learner.loss`) of the batch's
log-probs (`rlvr_jax.learner.logprobs`), gradients accumulated over
micro-batches of a row count or a token budget with one global
normalisation, then AdamW. `lower` gives the compiled programs of a run's
learner for an abstract batch (`packing.abstract_batch`), so the planner
compiles exactly the functions the run calls.

Mixed precision: parameters and optimizer state are fp32; the model casts them
to its compute dtype (bf16) for the matmuls; logits, log-softmax, entropy,
losses, reductions and gradient accumulation are fp32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rlvr_jax import sharding
from rlvr_jax.learner import loss as loss_lib
from rlvr_jax.learner import packing
from rlvr_jax.learner.logprobs import batch_scores, logprobs
from rlvr_jax.model import decoder

Params = Any
Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    """Loss and learner settings (hashable: a jit static argument).

    Defaults are the π1 recipe (docs/recipe.md).
    """

    temperature: float = 0.6  # τ: every log-prob and the entropy use logits / τ
    clip_eps: float = 0.2  # ε (ε_low; also ε_high unless clip_eps_high is set)
    clip_eps_high: float | None = None  # ε_high for asymmetric ("clip-higher")
    kl_coef: float = 0.001  # β; 0 disables the KL term (ref_logp not needed)
    kl_type: str = "low_var_kl"  # KL_t estimator, one of KL_TYPES
    entropy_coef: float = 0.001  # α, entropy bonus
    pg_coef: float = 1.0  # c_pg; 0 gives entropy-only training
    agg: str = "token-mean"  # one of AGG_MODES
    micro_batch_size: int | None = None  # rows per micro-batch; None: no split
    # Token budget per device and micro-batch (veRL's dynamic batch size):
    # rows of width W are split max_tokens // W rows per device at a time (see
    # packing.rows_per_micro_batch); when set it replaces micro_batch_size.
    max_tokens_per_micro_batch: int | None = None
    # True: π_old = the current params (stop-gradient), from the same forward
    # pass. That equals a separate recompute because train_step applies one
    # update per batch; for several updates per rollout batch, run `logprobs`
    # before the first one and pass the result as old_logp instead.
    recompute_old_logp: bool = True
    logits_chunk: int = 512  # sequence positions per head/log-softmax chunk
    # Per-layer gradient checkpointing in the gradient pass: the one switch
    # (the train step sets ModelConfig.remat from it; run configs never set
    # the model's own flag).
    remat: bool = True
    # How the learner's forward computes attention (ModelConfig.attention_kernel,
    # set from here like remat): "xla" or "flash" (the TPU kernel).
    attention_kernel: str = "xla"

    def __post_init__(self):
        if self.attention_kernel not in decoder.ATTENTION_KERNELS:
            raise ValueError(
                f"attention_kernel={self.attention_kernel!r} not in "
                f"{decoder.ATTENTION_KERNELS}"
            )
        if self.agg not in loss_lib.AGG_MODES:
            raise ValueError(f"agg={self.agg!r} not in {loss_lib.AGG_MODES}")
        if self.kl_type not in loss_lib.KL_TYPES:
            raise ValueError(f"kl_type={self.kl_type!r} not in {loss_lib.KL_TYPES}")
        if self.temperature <= 0:
            raise ValueError("the learner's temperature must be > 0")

    def replace(self, **changes) -> LearnerConfig:
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------- gradient pass
def _microbatch_loss(params, batch, num_tokens, num_seqs, *, model_config, cfg):
    logp_bt, entropy_bt = batch_scores(
        model_config, params, batch, cfg.temperature, cfg.logits_chunk
    )
    if cfg.recompute_old_logp:
        old_logp_bt = jax.lax.stop_gradient(logp_bt)
    else:
        old_logp_bt = batch["old_logp"]
    # With β = 0 a given ref_logp still yields the KL metric.
    ref_logp_bt = batch.get("ref_logp")
    loss, metrics = loss_lib.policy_loss(
        logp_bt,
        old_logp_bt,
        ref_logp_bt,
        batch["advantages"],
        batch["loss_mask"],
        entropy_bt,
        clip_eps=cfg.clip_eps,
        clip_eps_high=cfg.clip_eps_high,
        kl_coef=cfg.kl_coef,
        kl_type=cfg.kl_type,
        entropy_coef=cfg.entropy_coef,
        pg_coef=cfg.pg_coef,
        agg=cfg.agg,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        weights=batch.get("loss_weight"),
    )
    return loss, dict(metrics, loss=loss)


def loss_and_grads(
    params: Params,
    batch: Batch,
    *,
    model_config: decoder.ModelConfig,
    learner_config: LearnerConfig,
    mesh: Mesh | None = None,
) -> tuple[Params, dict[str, jax.Array]]:
    """Gradient of the mini-batch loss, accumulated over micro-batches.

    Every micro-batch normalises by the whole mini-batch's token and sequence
    counts, so the summed gradient is the full-batch gradient for every
    aggregation mode, whatever the micro-batch size. Micro-batch i takes rows
    i, i + n, i + 2n, ... (n micro-batches): with rows sharded contiguously,
    each micro-batch is then spread evenly over all devices.

    Args:
      params: fp32 parameters.
      batch: see `train_step`.
      model_config: the architecture; its `remat` and `attention_kernel`
        are replaced by learner_config's.
      learner_config: loss and micro-batching settings.
      mesh: when given, activations and micro-batches are constrained to
        rows over ('data', 'fsdp') and the gradient accumulator to the params'
        rules (see sharding.constrain_rows).

    Returns:
      (grads, metrics): fp32 grads like params; metrics as `policy_loss`'s
      plus loss, num_tokens, num_seqs.
    """
    with mesh_context(mesh):
        return _loss_and_grads(params, batch, model_config, learner_config, mesh)


def mesh_context(mesh: Mesh | None):
    """Traces under `mesh`, so the model's `constrain_rows` calls take effect."""
    if mesh is None:
        return contextlib.nullcontext()
    return jax.sharding.use_abstract_mesh(mesh.abstract_mesh)


def _loss_and_grads(params, batch, model_config, learner_config, mesh):
    cfg = learner_config
    model_config = model_config.replace(
        remat=cfg.remat, attention_kernel=cfg.attention_kernel
    )
    mask_bt = jnp.asarray(batch["loss_mask"], bool)
    num_tokens = jnp.sum(mask_bt)
    num_seqs = _num_seqs(mask_bt, batch.get("segment_ids"))

    def loss_fn(params, micro):
        return _microbatch_loss(
            params, micro, num_tokens, num_seqs, model_config=model_config, cfg=cfg
        )

    mb = micro_rows(cfg, batch["tokens"].shape, mesh)
    grads, metrics = accumulate_grads(loss_fn, params, batch, mb, mesh)
    metrics.update(num_tokens=num_tokens, num_seqs=num_seqs)
    return grads, metrics


def accumulate_grads(
    loss_fn: Callable[[Params, Batch], tuple[jax.Array, dict]],
    params: Params,
    batch: Batch,
    rows_per_micro: int,
    mesh: Mesh | None,
) -> tuple[Params, dict[str, jax.Array]]:
    """Σ over micro-batches of grad(loss_fn)(params, micro), and the summed
    metrics (a scan; fp32 accumulator placed like the params).

    `loss_fn(params, micro) -> (loss, metrics)` must normalise by the whole
    batch (counts closed over), so the sum is the full-batch gradient.
    Micro-batch i takes rows i, i + n, i + 2n, ... (`_split_micro`).
    """
    grad_fn = jax.grad(loss_fn, has_aux=True)
    n = _micro_batches(batch["tokens"].shape[0], rows_per_micro)
    if n == 1:
        return grad_fn(params, batch)

    def body(acc, micro):
        g, m = grad_fn(params, micro)
        return jax.tree.map(jnp.add, acc, g), m

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    if mesh is not None:  # the accumulator lives where the params do
        zeros = jax.lax.with_sharding_constraint(
            zeros, sharding.tree_shardings(params, mesh)
        )
    split = lambda x: _split_micro(x, rows_per_micro, n, mesh)
    grads, metrics_n = jax.lax.scan(body, zeros, jax.tree.map(split, batch))
    return grads, jax.tree.map(lambda x: jnp.sum(x, axis=0), metrics_n)


def map_micro_batches(
    fn: Callable[[Batch], jax.Array],
    batch: Batch,
    rows_per_micro: int,
    mesh: Mesh | None,
) -> jax.Array:
    """fn over the batch's micro-batches in turn (`lax.map`), the [rows, ...]
    results put back in row order: a forward pass that holds one
    micro-batch's activations at a time."""
    n = _micro_batches(batch["tokens"].shape[0], rows_per_micro)
    if n == 1:
        return fn(batch)
    micro = jax.tree.map(lambda x: _split_micro(x, rows_per_micro, n, mesh), batch)
    return _merge_micro(jax.lax.map(fn, micro))


def _num_seqs(mask_bt: jax.Array, segment_ids_bt: jax.Array | None) -> jax.Array:
    """Sequences with at least one loss token: rows, or segments when packed.

    A packed sequence's response tokens are contiguous and end its segment,
    so each one ends exactly once: where the next column is not a loss token
    of the same segment.
    """
    if segment_ids_bt is None:
        return jnp.sum(jnp.any(mask_bt, axis=-1))
    seg_bt = jnp.asarray(segment_ids_bt)
    same_next_bt = jnp.pad(
        mask_bt[:, 1:] & (seg_bt[:, 1:] == seg_bt[:, :-1]), ((0, 0), (0, 1))
    )
    return jnp.sum(mask_bt & ~same_next_bt)


def micro_rows(cfg: LearnerConfig, shape: tuple[int, ...], mesh: Mesh | None) -> int:
    """Rows per micro-batch of a [rows, width] batch: by token budget or rows."""
    rows, width = shape[:2]
    if cfg.max_tokens_per_micro_batch:
        divisor = 1 if mesh is None else sharding.batch_divisor(mesh)
        budget = cfg.max_tokens_per_micro_batch
        return min(rows, packing.rows_per_micro_batch(width, budget, divisor))
    return cfg.micro_batch_size or rows


def _micro_batches(rows: int, mb: int) -> int:
    if rows % mb:
        raise ValueError(f"batch of {rows} rows is not a multiple of {mb=}")
    return rows // mb


def _split_micro(x: jax.Array, mb: int, n: int, mesh: Mesh | None) -> jax.Array:
    """[rows, ...] -> [n, mb, ...]; micro-batch i holds rows i, i + n, i + 2n, ...

    With rows sharded contiguously, each micro-batch is spread evenly over
    all devices (its rows stay sharded over ('data', 'fsdp')).
    """
    x = x.reshape(mb, n, *x.shape[1:]).swapaxes(0, 1)
    if mesh is not None:
        spec = sharding.fit_spec(P(None, sharding.BATCH_AXES), x.shape, mesh)
        x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
    return x


def _merge_micro(x_n: jax.Array) -> jax.Array:
    """The inverse of `_split_micro`: [n, mb, ...] -> [rows, ...]."""
    n, mb = x_n.shape[:2]
    return x_n.swapaxes(0, 1).reshape(n * mb, *x_n.shape[2:])


# -------------------------------------------------------------- train state
class TrainState(NamedTuple):
    """Everything an optimizer step changes (a pytree; checkpoint it whole).

    Attributes:
      params: fp32 model parameters.
      opt_state: optax state (mirrors params; sharded like them).
      step: int32, train_step calls so far (applied + skipped).
      skipped: int32, updates skipped for a non-finite loss or gradient.
    """

    params: Params
    opt_state: optax.OptState
    step: jax.Array
    skipped: jax.Array


def new_state(params: Params, tx: optax.GradientTransformation) -> TrainState:
    """A fresh train state of `params` (own buffers) with `tx`'s initial state."""
    # `+ 0` gives the state its own buffers even when `params` is passed in,
    # so donating the state never invalidates the caller's (reference) params.
    params = jax.tree.map(lambda p: p + jnp.zeros((), p.dtype), params)
    zero = jnp.zeros((), jnp.int32)
    return TrainState(params, tx.init(params), zero, zero)


def state_of(abstract_params: Params, tx: optax.GradientTransformation) -> TrainState:
    """ShapeDtypeStructs of the train state of any params tree (the actor's,
    the critic's); allocates nothing."""
    return jax.eval_shape(lambda p: new_state(p, tx), abstract_params)


def placed(abstract_state: TrainState, mesh: Mesh) -> TrainState:
    """A train state's ShapeDtypeStructs carrying their shardings (params
    rules; counters replicated): a restore or `lower` target."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_state,
        sharding.tree_shardings(abstract_state, mesh),
    )


def jit_state_step(fn: Callable, shardings: TrainState, mesh: Mesh) -> Callable:
    """fn(state, batch) -> (state, metrics) jitted with the state's and a
    batch's shardings, the state donated, the metrics replicated."""
    return jax.jit(
        fn,
        in_shardings=(shardings, sharding.batch_sharding(mesh)),
        out_shardings=(shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )


def lower_state_update(
    state: TrainState, tx: optax.GradientTransformation, mesh: Mesh
) -> jax.stages.Lowered:
    """`apply_update` of a (sharded abstract) train state on accumulated
    gradients, the state donated, lowered (the planner's cost)."""
    loss = jax.ShapeDtypeStruct((), jnp.float32, sharding=sharding.replicated(mesh))
    return jax.jit(
        lambda state, grads, loss: apply_update(state, grads, loss, tx),
        donate_argnums=0,
    ).lower(state, state.params, loss)


def abstract_train_state(
    model_config: decoder.ModelConfig, tx: optax.GradientTransformation
) -> TrainState:
    """ShapeDtypeStructs of the train state; allocates nothing."""
    return state_of(decoder.abstract_params(model_config), tx)


def state_shardings(
    model_config: decoder.ModelConfig, tx: optax.GradientTransformation, mesh: Mesh
) -> TrainState:
    """NamedShardings of the train state (params rules; counters replicated)."""
    return sharding.tree_shardings(abstract_train_state(model_config, tx), mesh)


def sharded_abstract_state(
    model_config: decoder.ModelConfig, tx: optax.GradientTransformation, mesh: Mesh
) -> TrainState:
    """ShapeDtypeStructs carrying their shardings: a restore or `lower` target."""
    return placed(abstract_train_state(model_config, tx), mesh)


def init_train_state(
    model_config: decoder.ModelConfig,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    *,
    params: Params | None = None,
    rng: jax.Array | None = None,
) -> TrainState:
    """A train state created directly in its shardings (never whole on one device).

    Args:
      model_config: the architecture.
      tx: the optimizer (see rlvr_jax.learner.optimizer.adamw).
      mesh: device mesh.
      params: initial parameters, e.g. from `params.load_hf(...,
        shardings=sharding.tree_shardings(model.abstract_params(cfg), mesh))`.
        They are copied, so they stay valid as the frozen reference params.
      rng: random init instead (tests, `tiny` runs).
    """
    shardings = state_shardings(model_config, tx, mesh)
    if params is not None:
        return jax.jit(lambda p: new_state(p, tx), out_shardings=shardings)(params)
    if rng is None:
        raise ValueError("pass params or rng")
    init = lambda key: new_state(decoder.init_params(model_config, key), tx)
    return jax.jit(init, out_shardings=shardings)(rng)


# -------------------------------------------------------------- train step
def train_step(
    state: TrainState,
    batch: Batch,
    *,
    model_config: decoder.ModelConfig,
    learner_config: LearnerConfig,
    tx: optax.GradientTransformation,
    mesh: Mesh | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update on one mini-batch (pure; jit with `jit_train_step`).

    Args:
      state: the train state.
      batch: dict of arrays with B rows (B a multiple of the micro-batch):
        tokens     int32 [B, T]  left-padded prompt + response (+ right pad),
                                 or packed sequences (rlvr_jax/learner/packing.py)
        mask       bool  [B, T]  True for real tokens (attention validity)
        positions  int32 [B, T]  optional; RoPE positions, else from mask
        loss_mask  bool  [B, T]  True at generated response tokens to train on
        advantages f32   [B] or [B, T]  Â
        old_logp   f32   [B, T]  log π_old, aligned like logp; only read when
                                 not learner_config.recompute_old_logp
        ref_logp   f32   [B, T]  log π_ref (needed when kl_coef != 0)
        packed batches add (see rlvr_jax/learner/packing.py):
        segment_ids int32 [B, T] sequence of each token, 0 for padding
        loss_weight f32  [B, T]  per-token aggregation weight
        head_cols  int32 [B, K]  columns where the LM head runs
      model_config: the architecture.
      learner_config: loss settings.
      tx: the optimizer.
      mesh: optional; constrains micro-batch shardings.

    Returns:
      (new_state, metrics) with scalar metrics: loss, pg_loss, kl, entropy,
      clip_frac, ppo_kl, num_tokens, num_seqs, grad_norm (global, before
      clipping), update_ratio, skipped (1 if this update was skipped) and
      skipped_total.
      A non-finite loss or gradient norm leaves params and opt_state unchanged.
    """
    grads, metrics = loss_and_grads(
        state.params,
        batch,
        model_config=model_config,
        learner_config=learner_config,
        mesh=mesh,
    )
    new_state, update_metrics = apply_update(state, grads, metrics["loss"], tx)
    metrics.update(update_metrics)
    return new_state, metrics


def apply_update(
    state: TrainState, grads: Params, loss: jax.Array, tx: optax.GradientTransformation
) -> tuple[TrainState, dict[str, jax.Array]]:
    """The optimizer step of `train_step` on accumulated `grads`.

    Returns (new_state, metrics: grad_norm, update_ratio (‖update‖ / ‖params‖,
    0 when skipped), skipped, skipped_total); a non-finite `loss` or gradient
    norm leaves params and opt_state unchanged.
    """
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # The update's size relative to the weights: how far one step moves them
    # (a rate far outside the run's history, or above 1, is a run gone wrong).
    update_ratio = optax.tree.norm(updates) / optax.tree.norm(state.params)
    keep = lambda new, old: jnp.where(ok, new, old)
    skipped = state.skipped + (~ok).astype(jnp.int32)
    new_state = TrainState(
        params=jax.tree.map(keep, params, state.params),
        opt_state=jax.tree.map(keep, opt_state, state.opt_state),
        step=state.step + 1,
        skipped=skipped,
    )
    metrics = dict(
        grad_norm=grad_norm,
        update_ratio=jnp.where(ok, update_ratio, 0.0),
        skipped=(~ok).astype(jnp.int32),
        skipped_total=skipped,
    )
    return new_state, metrics


def jit_train_step(
    model_config: decoder.ModelConfig,
    learner_config: LearnerConfig,
    tx: optax.GradientTransformation,
    mesh: Mesh,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """`train_step` jitted with state/batch shardings and the state donated.

    The returned fn(state, batch) expects the state from `init_train_state`
    and a batch from `sharding.shard_batch`; metrics come back replicated.
    """
    step = functools.partial(
        train_step,
        model_config=model_config,
        learner_config=learner_config,
        tx=tx,
        mesh=mesh,
    )
    return jit_state_step(step, state_shardings(model_config, tx, mesh), mesh)


# The batch arrays the log-prob pass reads (`logprobs`).
LOGPROB_INPUTS = ("tokens", "mask", "positions", "segment_ids", "head_cols")


def jit_logprobs(
    model_config: decoder.ModelConfig, learner_config: LearnerConfig, mesh: Mesh
) -> Callable[[Params, Batch], jax.Array]:
    """`logprobs` at the learner's τ, jitted: fn(params, batch) -> logp [B, T].

    Params keep whatever sharding they have (fp32 or a bf16 copy of the
    reference weights both work); the result is row-sharded like a batch, so
    it can be put straight into the batch as old_logp / ref_logp. The batch
    runs in the train step's micro-batches (`micro_batch_size` rows or the
    token budget), so its activations take a micro-batch's memory, not the
    whole batch's.
    """

    model_config = model_config.replace(
        attention_kernel=learner_config.attention_kernel
    )

    def one(params, batch):
        return logprobs(
            model_config,
            params,
            batch,
            temperature=learner_config.temperature,
            logits_chunk=learner_config.logits_chunk,
        )

    def fn(params, batch):
        with mesh_context(mesh):
            mb = micro_rows(learner_config, batch["tokens"].shape, mesh)
            return map_micro_batches(lambda b: one(params, b), batch, mb, mesh)

    jitted = jax.jit(fn, out_shardings=sharding.batch_sharding(mesh))

    def call(params, batch):
        # Only what the pass reads goes in: the program is the same whatever
        # else the caller's batch holds (advantages, weights, ...).
        return jitted(params, {k: batch[k] for k in LOGPROB_INPUTS if k in batch})

    call.lower = lambda params, batch: jitted.lower(
        params, {k: batch[k] for k in LOGPROB_INPUTS if k in batch}
    )
    return call


# ------------------------------------------------------------------ programs
def abstract_batch(
    shapes: dict[str, tuple[tuple[int, ...], str]], mesh: Mesh, ref_logp: bool
) -> Batch:
    """ShapeDtypeStructs of a learner batch placed as `jit_train_step` takes
    it (rows over the mesh's batch axes); `shapes` from
    `packing.abstract_batch`, plus `ref_logp` when the reference pass fills it.
    """
    rows = sharding.batch_sharding(mesh)
    batch = {
        k: jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=rows)
        for k, (shape, dtype) in shapes.items()
    }
    if ref_logp:
        batch["ref_logp"] = jax.ShapeDtypeStruct(
            batch["tokens"].shape, jnp.float32, sharding=rows
        )
    return batch


def lower_train_step(
    model_config: decoder.ModelConfig,
    learner_config: LearnerConfig,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    batch: Batch,
) -> jax.stages.Lowered:
    """`jit_train_step`'s program for an abstract `batch`, lowered (the state
    abstract and sharded as `init_train_state` makes it)."""
    state = sharded_abstract_state(model_config, tx, mesh)
    return jit_train_step(model_config, learner_config, tx, mesh).lower(state, batch)


def lower_logprobs(
    model_config: decoder.ModelConfig,
    learner_config: LearnerConfig,
    mesh: Mesh,
    params: Params,
    batch: Batch,
) -> jax.stages.Lowered:
    """`jit_logprobs`'s program for abstract `params` and `batch`, lowered."""
    return jit_logprobs(model_config, learner_config, mesh).lower(params, batch)


def lower_micro_step(
    model_config: decoder.ModelConfig,
    learner_config: LearnerConfig,
    mesh: Mesh,
    params: Params,
    batch: Batch,
) -> jax.stages.Lowered:
    """The body of the train step's micro-batch scan for one micro-batch
    `batch`: its gradients added to an accumulator (donated), lowered. The
    train step is M of these and one `apply_update` (the planner's cost)."""
    one = learner_config.replace(micro_batch_size=None, max_tokens_per_micro_batch=None)
    grads_fn = functools.partial(
        loss_and_grads, model_config=model_config, learner_config=one, mesh=mesh
    )
    return lower_accumulated(grads_fn, params, batch)


def lower_accumulated(
    grads_fn: Callable[[Params, Batch], tuple[Params, dict]],
    params: Params,
    batch: Batch,
) -> jax.stages.Lowered:
    """grads_fn(params, micro)'s gradients added to a donated accumulator
    like `params`, lowered: one micro-batch of a gradient scan."""

    def body(acc, params, micro):
        grads, metrics = grads_fn(params, micro)
        return jax.tree.map(jnp.add, acc, grads), metrics

    return jax.jit(body, donate_argnums=0).lower(params, params, batch)


def lower_update(
    model_config: decoder.ModelConfig, tx: optax.GradientTransformation, mesh: Mesh
) -> jax.stages.Lowered:
    """The train step's optimizer update (`apply_update`) on accumulated
    gradients, the state donated, lowered."""
    return lower_state_update(sharded_abstract_state(model_config, tx, mesh), tx, mesh)
