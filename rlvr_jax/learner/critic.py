"""PPO's critic: the value model, its train state and its jitted programs.

The critic is the policy's decoder with a value head (hidden → 1) where the
LM head was, as veRL builds it (`AutoModelForTokenClassification` with
`num_labels=1`, loaded from the policy's base checkpoint, so the head alone
is fresh; verl/workers/fsdp_workers.py `_build_critic_model_optimizer`). Its
parameters:

    {"decoder": the decoder's params without an LM head,
     "value_head": {"kernel": [D, 1], "bias": [1]}}

both fp32, trained by their own AdamW (`CriticState` is the learner's
`TrainState`, sharded by the same rules: the decoder like the actor's, the
head replicated). As a Hugging Face checkpoint (that model class, the head
as `score`): `rlvr_jax.model.params.save_critic_hf` / `load_critic_hf`.

Alignment. `values(...)[b, c]` is the head on the final hidden state at
column c: the value of the state after token c, i.e. before token c + 1.
The value of the state before response token j of a sequence is therefore
at the column before that token, and the value after its last token at
that token's own column (`rlvr_jax.learner.ppo` maps veRL's response layout
onto these columns). The critic's batch carries its targets on the same
columns:

    returns     f32  [B, T]  R (GAE returns)
    old_values  f32  [B, T]  V_old, the values R was computed from
    value_mask  bool [B, T]  the columns the value loss trains on

Loss: `gae.value_loss` (veRL's clipped value loss) with the token mean over
the whole mini-batch's `value_mask` columns, so the summed micro-batch
gradients are the mini-batch gradient whatever the micro-batching and
packing (veRL weights each micro-batch's own token mean by its row share,
which equals this with one micro-batch). Micro-batches, remat and the
attention kernel are the actor's (`step.micro_rows`): the critic trains on
the actor's packed batch.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from rlvr_jax import sharding
from rlvr_jax.learner import gae
from rlvr_jax.learner import step as step_lib
from rlvr_jax.model import decoder
from rlvr_jax.model import params as params_lib

Params = Any
Batch = dict[str, jax.Array]
CriticState = step_lib.TrainState

DECODER = params_lib.CRITIC_DECODER
VALUE_HEAD = params_lib.CRITIC_HEAD
# transformers' `_init_weights` draws a fresh Linear from N(0, initializer_range)
# (0.02 in every config of the paper's models) with a zero bias.
HEAD_INIT_STDDEV = 0.02

# The batch arrays the value pass reads.
VALUE_INPUTS = ("tokens", "mask", "positions", "segment_ids")


@dataclasses.dataclass(frozen=True)
class CriticConfig:
    """The critic's loss and memory settings (hashable: a jit static argument).

    Defaults: veRL's `critic` section (ppo_trainer.yaml): value clip 0.5.
    Micro-batching follows the actor's fields of the same names.
    """

    cliprange_value: float = 0.5  # ε_v of the clipped value loss
    micro_batch_size: int | None = None
    max_tokens_per_micro_batch: int | None = None
    remat: bool = True
    attention_kernel: str = "xla"

    def __post_init__(self):
        if self.cliprange_value <= 0:
            raise ValueError("critic.cliprange_value must be > 0")
        if self.attention_kernel not in decoder.ATTENTION_KERNELS:
            raise ValueError(
                f"attention_kernel={self.attention_kernel!r} not in "
                f"{decoder.ATTENTION_KERNELS}"
            )

    @classmethod
    def like(cls, learner_config, cliprange_value: float) -> CriticConfig:
        """The critic's settings beside an actor's `LearnerConfig`: its
        micro-batches, remat and attention kernel."""
        return cls(
            cliprange_value=cliprange_value,
            micro_batch_size=learner_config.micro_batch_size,
            max_tokens_per_micro_batch=learner_config.max_tokens_per_micro_batch,
            remat=learner_config.remat,
            attention_kernel=learner_config.attention_kernel,
        )


# ----------------------------------------------------------------- model
def decoder_config(model_config: decoder.ModelConfig) -> decoder.ModelConfig:
    """The critic's decoder: the policy's, without an LM head (a tied head
    creates no parameter, and the critic never calls it)."""
    return params_lib.critic_body_config(model_config)


def init_head(model_config: decoder.ModelConfig, rng: jax.Array) -> Params:
    """A fresh value head: kernel ~ N(0, 0.02²) [D, 1], bias 0 [1]."""
    dtype = jnp.dtype(model_config.param_dtype)
    kernel = HEAD_INIT_STDDEV * jax.random.normal(rng, (model_config.d_model, 1))
    return {"kernel": kernel.astype(dtype), "bias": jnp.zeros((1,), dtype)}


def from_policy(
    model_config: decoder.ModelConfig, policy_params: Params, rng: jax.Array
) -> Params:
    """Critic params from the policy's (base) params and a fresh head."""
    body = {k: v for k, v in policy_params.items() if k != "lm_head"}
    return {DECODER: body, VALUE_HEAD: init_head(model_config, rng)}


def init_params(model_config: decoder.ModelConfig, rng: jax.Array) -> Params:
    """Random critic params (tests and `tiny` runs)."""
    body_rng, head_rng = jax.random.split(rng)
    body = decoder.init_params(decoder_config(model_config), body_rng)
    return {DECODER: body, VALUE_HEAD: init_head(model_config, head_rng)}


def abstract_params(model_config: decoder.ModelConfig) -> Params:
    """ShapeDtypeStructs of the critic's params; allocates nothing."""
    return params_lib.abstract_critic_params(model_config)


def values(
    model_config: decoder.ModelConfig, params: Params, batch: Batch
) -> jax.Array:
    """The value head at every column, fp32 [B, T] (module docstring).

    Reads batch["tokens"], ["mask"] and, when present, ["positions"] and
    ["segment_ids"] (packed rows). The head's matmul runs in the compute
    dtype with an fp32 result, as the LM head's does.
    """
    x_btd, _ = decoder.hidden(
        decoder_config(model_config),
        params[DECODER],
        batch["tokens"],
        batch.get("positions"),
        batch["mask"],
        segment_ids_bt=batch.get("segment_ids"),
        constrain=sharding.constrain_rows,
    )
    head = params[VALUE_HEAD]
    kernel_d1 = head["kernel"].astype(model_config.dtype)
    v_bt1 = jnp.einsum(
        "btd,do->bto", x_btd, kernel_d1, preferred_element_type=jnp.float32
    )
    return v_bt1[..., 0] + head["bias"][0].astype(jnp.float32)


# ------------------------------------------------------------- gradient pass
def _with_settings(model_config, cfg):
    return model_config.replace(remat=cfg.remat, attention_kernel=cfg.attention_kernel)


def loss_and_grads(
    params: Params,
    batch: Batch,
    *,
    model_config: decoder.ModelConfig,
    critic_config: CriticConfig,
    mesh: Mesh | None = None,
) -> tuple[Params, dict[str, jax.Array]]:
    """Gradient of the clipped value loss over the mini-batch, accumulated
    over micro-batches (each normalised by the whole mini-batch's count).

    Returns:
      (grads, metrics): vf_loss, vf_clipfrac, vpred_mean (the masked mean of
      the predicted values) and num_tokens (value-mask columns).
    """
    cfg = critic_config
    model_config = _with_settings(model_config, cfg)
    num_tokens = jnp.sum(jnp.asarray(batch["value_mask"], bool))

    def loss_fn(params, micro):
        v_bt = values(model_config, params, micro)
        mask_bt = jnp.asarray(micro["value_mask"], bool)
        loss, clipfrac = gae.value_loss(
            v_bt,
            micro["returns"],
            micro["old_values"],
            mask_bt,
            cliprange_value=cfg.cliprange_value,
            agg="token-mean",
            num_tokens=num_tokens,
        )
        vpred = jnp.sum(jnp.where(mask_bt, jax.lax.stop_gradient(v_bt), 0.0))
        vpred_mean = vpred / jnp.maximum(num_tokens, 1).astype(jnp.float32)
        return loss, dict(vf_loss=loss, vf_clipfrac=clipfrac, vpred_mean=vpred_mean)

    with step_lib.mesh_context(mesh):
        mb = step_lib.micro_rows(cfg, batch["tokens"].shape, mesh)
        grads, metrics = step_lib.accumulate_grads(loss_fn, params, batch, mb, mesh)
    metrics["num_tokens"] = num_tokens
    return grads, metrics


# -------------------------------------------------------------- train state
def abstract_state(
    model_config: decoder.ModelConfig, tx: optax.GradientTransformation
) -> CriticState:
    """ShapeDtypeStructs of the critic's train state."""
    return step_lib.state_of(abstract_params(model_config), tx)


def state_shardings(
    model_config: decoder.ModelConfig, tx: optax.GradientTransformation, mesh: Mesh
) -> CriticState:
    """NamedShardings of the critic's state (the params rules)."""
    return sharding.tree_shardings(abstract_state(model_config, tx), mesh)


def sharded_abstract_state(
    model_config: decoder.ModelConfig, tx: optax.GradientTransformation, mesh: Mesh
) -> CriticState:
    """ShapeDtypeStructs carrying their shardings: a restore or `lower` target."""
    return step_lib.placed(abstract_state(model_config, tx), mesh)


def init_state(
    model_config: decoder.ModelConfig,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rng: jax.Array,
    *,
    policy_params: Params | None = None,
) -> CriticState:
    """The critic's train state, created in its shardings: the policy's
    (base) params with a fresh head from `rng`, or all random without them."""
    shardings = state_shardings(model_config, tx, mesh)
    if policy_params is not None:
        make = lambda p, k: step_lib.new_state(from_policy(model_config, p, k), tx)
        return jax.jit(make, out_shardings=shardings)(policy_params, rng)
    make = lambda k: step_lib.new_state(init_params(model_config, k), tx)
    return jax.jit(make, out_shardings=shardings)(rng)


# -------------------------------------------------------------- train step
def train_step(
    state: CriticState,
    batch: Batch,
    *,
    model_config: decoder.ModelConfig,
    critic_config: CriticConfig,
    tx: optax.GradientTransformation,
    mesh: Mesh | None = None,
) -> tuple[CriticState, dict[str, jax.Array]]:
    """One critic update on one mini-batch (pure; jit with `jit_train_step`).

    `batch`: the actor's packed batch (tokens, mask, positions, segment_ids)
    with returns, old_values and value_mask (module docstring). Metrics:
    `loss_and_grads`' and `step.apply_update`'s (grad_norm before clipping,
    update_ratio, skipped, skipped_total); a non-finite loss or gradient
    leaves the state's params and moments unchanged.
    """
    grads, metrics = loss_and_grads(
        state.params,
        batch,
        model_config=model_config,
        critic_config=critic_config,
        mesh=mesh,
    )
    new_state, update_metrics = step_lib.apply_update(
        state, grads, metrics["vf_loss"], tx
    )
    metrics.update(update_metrics)
    return new_state, metrics


def jit_train_step(
    model_config: decoder.ModelConfig,
    critic_config: CriticConfig,
    tx: optax.GradientTransformation,
    mesh: Mesh,
) -> Callable[[CriticState, Batch], tuple[CriticState, dict[str, jax.Array]]]:
    """`train_step` jitted with the state's and batch's shardings, the state
    donated; metrics come back replicated."""
    fn = functools.partial(
        train_step,
        model_config=model_config,
        critic_config=critic_config,
        tx=tx,
        mesh=mesh,
    )
    return step_lib.jit_state_step(fn, state_shardings(model_config, tx, mesh), mesh)


def jit_values(
    model_config: decoder.ModelConfig, critic_config: CriticConfig, mesh: Mesh
) -> Callable[[Params, Batch], jax.Array]:
    """`values` jitted and micro-batched like the train step:
    fn(params, batch) -> fp32 [B, T], row-sharded like a batch."""
    model_config = model_config.replace(attention_kernel=critic_config.attention_kernel)

    def fn(params, batch):
        with step_lib.mesh_context(mesh):
            mb = step_lib.micro_rows(critic_config, batch["tokens"].shape, mesh)
            return step_lib.map_micro_batches(
                lambda b: values(model_config, params, b), batch, mb, mesh
            )

    jitted = jax.jit(fn, out_shardings=sharding.batch_sharding(mesh))

    def inputs(batch):
        return {k: batch[k] for k in VALUE_INPUTS if k in batch}

    def call(params, batch):
        return jitted(params, inputs(batch))

    call.lower = lambda params, batch: jitted.lower(params, inputs(batch))
    return call


# ------------------------------------------------------------------ programs
CRITIC_TARGETS = {"returns": "float32", "old_values": "float32", "value_mask": "bool"}


def abstract_batch(actor_batch: Batch) -> Batch:
    """The critic's abstract batch beside an abstract actor batch
    (`step.abstract_batch`): its inputs and targets, placed like its rows."""
    tokens = actor_batch["tokens"]
    batch = {k: actor_batch[k] for k in VALUE_INPUTS if k in actor_batch}
    for name, dtype in CRITIC_TARGETS.items():
        batch[name] = jax.ShapeDtypeStruct(
            tokens.shape, jnp.dtype(dtype), sharding=tokens.sharding
        )
    return batch


def lower_train_step(
    model_config: decoder.ModelConfig,
    critic_config: CriticConfig,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    batch: Batch,
) -> jax.stages.Lowered:
    """`jit_train_step`'s program for an abstract critic `batch`, lowered."""
    state = sharded_abstract_state(model_config, tx, mesh)
    fn = jit_train_step(model_config, critic_config, tx, mesh)
    return fn.lower(state, batch)


def lower_values(
    model_config: decoder.ModelConfig,
    critic_config: CriticConfig,
    mesh: Mesh,
    batch: Batch,
) -> jax.stages.Lowered:
    """`jit_values`' program for an abstract batch, the params abstract."""
    params = sharded_abstract_state(model_config, optax.identity(), mesh).params
    return jit_values(model_config, critic_config, mesh).lower(params, batch)


def lower_micro_step(
    model_config: decoder.ModelConfig,
    critic_config: CriticConfig,
    mesh: Mesh,
    batch: Batch,
) -> jax.stages.Lowered:
    """One micro-batch of the critic's gradient scan, accumulated into a
    donated buffer (the planner's cost: M of these and one update)."""
    one = dataclasses.replace(
        critic_config, micro_batch_size=None, max_tokens_per_micro_batch=None
    )
    params = sharded_abstract_state(model_config, optax.identity(), mesh).params
    grads_fn = functools.partial(
        loss_and_grads, model_config=model_config, critic_config=one, mesh=mesh
    )
    return step_lib.lower_accumulated(grads_fn, params, batch)


def lower_update(
    model_config: decoder.ModelConfig, tx: optax.GradientTransformation, mesh: Mesh
) -> jax.stages.Lowered:
    """The critic's optimizer update on accumulated gradients, lowered."""
    state = sharded_abstract_state(model_config, tx, mesh)
    return step_lib.lower_state_update(state, tx, mesh)
