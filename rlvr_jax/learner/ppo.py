"""PPO's per-step targets for a packed batch: GAE in veRL's layout, placed
back on the packed columns.

veRL computes rewards, GAE and the value targets on [N, R] response arrays
(row n a response, column j its token j, R the rollout's max_new_tokens;
`rlvr_jax.learner.gae`). The learner trains on packed rows
(`rlvr_jax.learner.packing`). This module moves between the two with an
index of where each response sits (`Layout`), runs gae.py's functions on the
host's CPU device (cheap next to the model passes; every process computes
the same numbers from the gathered step), and returns

    advantages  f32  [B, W]  Â_j at response token j's column (the actor's)
    returns     f32  [B, W]  R_j at the column of V_j (the critic's target)
    old_values  f32  [B, W]  V_j there (the value clip's centre)
    value_mask  bool [B, W]  veRL's critic mask: V_0..V_L for a row of
                             length L < R, V_0..V_{L−1} for a full row

Columns: response token j of a sequence whose response starts at column f
sits at f + j; V_j, the value of the state before token j, is the critic's
output at f − 1 + j (`critic.values`: column c is the state after token c).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from rlvr_jax.learner import gae


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where each response of a packed batch sits.

    Attributes:
      rows: [N] the packed row of sequence n.
      first: [N] the column of its first response token (its segment's end
        minus its response length).
      lengths: [N] its response length L_n.
      width: R, the response width of veRL's layout (max_new_tokens).
      shape: the packed batch's [B, W].
    """

    rows: np.ndarray
    first: np.ndarray
    lengths: np.ndarray
    width: int
    shape: tuple[int, int]

    @property
    def response_mask(self) -> np.ndarray:
        """bool [N, R]: j < L_n."""
        return np.arange(self.width)[None, :] < self.lengths[:, None]

    @property
    def critic_mask(self) -> np.ndarray:
        """bool [N, R]: veRL's critic mask (`gae.critic_mask`)."""
        return np.asarray(gae.critic_mask(self.response_mask))

    def gather(self, x_bw: np.ndarray, valid_nr: np.ndarray, shift: int) -> np.ndarray:
        """[N, R] from packed [B, W]: entry (n, j) from column first_n + shift
        + j of row rows_n where `valid_nr`, else 0."""
        cols_nr = self.first[:, None] + shift + np.arange(self.width)[None, :]
        cols_nr = np.clip(cols_nr, 0, self.shape[1] - 1)
        out = np.asarray(x_bw)[self.rows[:, None], cols_nr]
        return np.where(valid_nr, out, 0).astype(np.asarray(x_bw).dtype)

    def scatter(self, x_nr: np.ndarray, valid_nr: np.ndarray, shift: int) -> np.ndarray:
        """The inverse of `gather`: packed [B, W], zero off the valid entries."""
        x_nr = np.asarray(x_nr)
        out = np.zeros(self.shape, x_nr.dtype)
        n, j = np.nonzero(valid_nr)
        out[self.rows[n], self.first[n] + shift + j] = x_nr[n, j]
        return out


def layout(batch: dict[str, np.ndarray], lengths: np.ndarray, width: int) -> Layout:
    """The `Layout` of a packed host batch (`packing.pack`) whose sequence n
    (segment n + 1) has a response of lengths[n] tokens ≤ width."""
    lengths = np.asarray(lengths, np.int64)
    if lengths.size and lengths.max() > width:
        raise ValueError(f"a response of {lengths.max()} tokens exceeds {width=}")
    seg_bw = np.asarray(batch["segment_ids"])
    rows_k, cols_k = np.nonzero(seg_bw)
    seq_k = seg_bw[rows_k, cols_k] - 1
    end = np.zeros(lengths.size, np.int64)
    np.maximum.at(end, seq_k, cols_k + 1)
    rows = np.zeros(lengths.size, np.int64)
    rows[seq_k] = rows_k
    return Layout(rows, end - lengths, lengths, width, seg_bw.shape)


@dataclasses.dataclass(frozen=True)
class KLInReward:
    """veRL's KL penalty in the reward (`gae.kl_in_reward`): π_old's and the
    reference's log-probs of the step's batch (packed [B, W], aligned like
    the learner's), with β and the estimator."""

    logp: np.ndarray
    ref_logp: np.ndarray
    coef: float
    kind: str


def targets(
    batch: dict[str, np.ndarray],
    values_bw: np.ndarray,
    scores: np.ndarray,
    lengths: np.ndarray,
    width: int,
    *,
    gamma: float,
    lam: float,
    kl: KLInReward | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """GAE advantages and the critic's targets of one step, packed.

    Args:
      batch: the packed host batch (its segment_ids).
      values_bw: the critic's values of that batch (`critic.values`), host.
      scores: [N] each response's score (the verifier's reward).
      lengths: [N] response lengths.
      width: veRL's response width (rollout.max_new_tokens).
      gamma, lam: γ and λ.
      kl: the KL penalty in the reward, or None (the KL in the loss, or none).

    Returns:
      (arrays, metrics): the four arrays of the module docstring; metrics
      under veRL's names (ray_trainer.compute_data_metrics: critic/score,
      rewards (row sums), advantages, returns and values over the response
      tokens, vf_explained_var; critic/kl and kl_coeff with the KL penalty).
    """
    lay = layout(batch, lengths, width)
    mask_nr, cmask_nr = lay.response_mask, lay.critic_mask
    values_nr = lay.gather(np.asarray(values_bw, np.float32), cmask_nr, -1)
    cpu = jax.local_devices(backend="cpu")[0]
    with jax.default_device(cpu):
        scores_n = np.asarray(scores, np.float32)
        rewards_nr = gae.token_level_rewards(scores_n, mask_nr)
        metrics: dict[str, float] = {}
        if kl is not None:
            logp_nr = lay.gather(np.asarray(kl.logp, np.float32), mask_nr, 0)
            ref_nr = lay.gather(np.asarray(kl.ref_logp, np.float32), mask_nr, 0)
            rewards_nr, kl_mean = gae.kl_in_reward(
                rewards_nr, logp_nr, ref_nr, mask_nr, kl.coef, kl.kind
            )
            metrics.update({"critic/kl": float(kl_mean), "critic/kl_coeff": kl.coef})
        adv_nr, returns_nr = gae.gae_advantages_and_returns(
            rewards_nr, values_nr, mask_nr, gamma, lam
        )
        explained = float(gae.explained_variance(returns_nr, values_nr, mask_nr))
    adv_nr, returns_nr = np.asarray(adv_nr), np.asarray(returns_nr)
    rewards_n = np.asarray(rewards_nr).sum(axis=1)
    for name, x in (
        ("score", scores_n),
        ("rewards", rewards_n),
        ("advantages", adv_nr[mask_nr]),
        ("returns", returns_nr[mask_nr]),
        ("values", values_nr[mask_nr]),
    ):
        if x.size:
            metrics.update(
                {
                    f"critic/{name}/mean": float(x.mean()),
                    f"critic/{name}/max": float(x.max()),
                    f"critic/{name}/min": float(x.min()),
                }
            )
    metrics["critic/vf_explained_var"] = explained
    arrays = {
        "advantages": lay.scatter(adv_nr.astype(np.float32), mask_nr, 0),
        "returns": lay.scatter(returns_nr.astype(np.float32), cmask_nr, -1),
        "old_values": lay.scatter(values_nr, cmask_nr, -1),
        "value_mask": lay.scatter(np.ones(mask_nr.shape, bool), cmask_nr, -1),
    }
    return arrays, metrics
