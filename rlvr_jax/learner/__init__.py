"""The learner: GRPO's loss math, token log-probs, the packed batch, the
optimizer and the jitted train step.

This package face is the stable learner API (`rlvr_jax.grpo` is the same
module): `advantages`, `policy_loss`, `logprobs`, `train_step`, ... The parts:

  loss.py       advantages, KL estimators, aggregation, the clipped policy loss
  logprobs.py   token log-probs and entropy of a batch through the model
  step.py       LearnerConfig, micro-batching, the train state, the jitted
                train step and log-prob pass, and `lower` (their programs)
  packing.py    the packed batch layout (pure numpy)
  optimizer.py  AdamW with the recipe's schedule
  gae.py        PPO's critic-side math as veRL computes it
  critic.py     PPO's critic: value model, train state, jitted programs
  ppo.py        a PPO step's GAE targets on the packed columns
"""

from rlvr_jax.learner.logprobs import (
    logprobs,
    logprobs_and_entropy,
    logprobs_from_logits,
)
from rlvr_jax.learner.loss import (
    AGG_MODES,
    KL_TYPES,
    advantages,
    aggregate,
    kl_penalty,
    policy_loss,
)
from rlvr_jax.learner.step import (
    LearnerConfig,
    TrainState,
    abstract_train_state,
    apply_update,
    init_train_state,
    jit_logprobs,
    jit_train_step,
    loss_and_grads,
    lower_logprobs,
    lower_micro_step,
    lower_train_step,
    lower_update,
    micro_rows,
    sharded_abstract_state,
    state_shardings,
    train_step,
)
