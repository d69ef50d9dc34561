"""Supervised warm start: cross-entropy on prompt → worked solution.

The laptop lab's stand-in for the paper's pretrained base model: a tiny
random Qwen2 is fine-tuned on the synthetic pool's worked solutions
(`rlvr_jax.lab.synthetic`) until it solves some held-out problems, then RLVR
starts from it (`checkpoint.resume_from=<this workdir>`).

    python -m rlvr_jax.sft --config=configs/lab/sft.py --workdir=/tmp/lab/sft

It reuses the RL trainer's pieces rather than copying them: the model source,
optimizer, initial state and evaluation sampling (`build`), the train state and its shardings and the per-token
log-probs (`grpo`), the checkpoint layout (`checkpoint`: a run's workdir is
accepted by `checkpoint.resume_from` and `model.path`-free evaluation), the
metrics files (`metrics`) and the greedy evaluation (`train.evaluate`). The
config is a training config (`rlvr_jax.base_config`); SFT reads
  data.train_path        JSONL rows with `problem` and `solution` (the response)
  train.steps, train.batch_size, optim.*, seed
  rollout.max_new_tokens the response width (longer solutions are an error)
  eval.path, eval.every  held-out sets: loss on their solutions, greedy accuracy
  eval.max_new_tokens    greedy answer length; 0 = the held-out loss only
  checkpoint.*, log.*

A batch row is [left-padded prompt | solution + <|im_end|> | right padding];
the loss is the token-mean negative log-likelihood of the solution and its
stop token, so the model learns to stop where the sampler stops.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from etils import epath
from ml_collections import config_flags

from rlvr_jax import build, learner
from rlvr_jax import checkpoint as ckpt_lib
from rlvr_jax import io as io_lib
from rlvr_jax import metrics as metrics_lib
from rlvr_jax import reward as reward_lib
from rlvr_jax import sharding as sharding_lib
from rlvr_jax import train as train_lib
from rlvr_jax.data import examples as data_lib
from rlvr_jax.data import tokenizer as tokenizer_lib
from rlvr_jax.model import decoder as model_lib


# ------------------------------------------------------------------ batches
def encode_pairs(
    tokenizer, rows: list[dict], max_prompt_len: int, max_response_len: int
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids + stop id) per `problem`/`solution` row.

    Raises:
      ValueError: naming the row, when a prompt or response is too long
        (never truncated: a cut solution loses its boxed answer).
    """
    examples = [
        data_lib.Example(i, ({"role": "user", "content": r["problem"]},), r["answer"])
        for i, r in enumerate(rows)
    ]
    prompts = data_lib.encode_prompts(tokenizer, examples, max_prompt_len)
    stop = tokenizer_lib.stop_token_ids(tokenizer)[0]
    responses = tokenizer([r["solution"] for r in rows], add_special_tokens=False)
    pairs = []
    for i, (p, r) in enumerate(zip(prompts, responses["input_ids"], strict=True)):
        r = list(r) + [stop]
        if len(r) > max_response_len:
            raise ValueError(
                f"row {i}: solution has {len(r)} tokens with its stop token, over "
                f"rollout.max_new_tokens={max_response_len}"
            )
        pairs.append((p, r))
    return pairs


def make_batch(
    pairs: list[tuple[list[int], list[int]]],
    prompt_len: int,
    response_len: int,
    pad_id: int,
) -> dict[str, np.ndarray]:
    """tokens/mask/loss_mask [B, prompt_len + response_len] for `pairs`."""
    b, t = len(pairs), prompt_len + response_len
    tokens_bt = np.full((b, t), pad_id, np.int32)
    mask_bt = np.zeros((b, t), bool)
    loss_bt = np.zeros((b, t), bool)
    for i, (p, r) in enumerate(pairs):
        start = prompt_len - len(p)  # prompts left-padded, as the sampler does
        tokens_bt[i, start : prompt_len + len(r)] = p + r
        mask_bt[i, start : prompt_len + len(r)] = True
        loss_bt[i, prompt_len : prompt_len + len(r)] = True
    return {"tokens": tokens_bt, "mask": mask_bt, "loss_mask": loss_bt}


# --------------------------------------------------------------------- loss
def nll_sums(model_config, params, batch) -> tuple[jax.Array, jax.Array]:
    """(Σ −log p over response tokens, their count): token-mean = ratio."""
    logp_bt, _ = learner.logprobs_and_entropy(
        model_config, params, batch["tokens"], batch["mask"], temperature=1.0
    )
    mask_bt = batch["loss_mask"].astype(jnp.float32)
    return -jnp.sum(logp_bt * mask_bt), jnp.sum(mask_bt)


def sft_step(state: learner.TrainState, batch, *, model_config, tx):
    """One AdamW update on the token-mean NLL; returns (state, metrics)."""

    def loss_fn(params):
        total, count = nll_sums(model_config, params, batch)
        return total / jnp.maximum(count, 1.0)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    # The RL learner's update, so a non-finite step is skipped here too.
    new_state, metrics = learner.apply_update(state, grads, loss, tx)
    return new_state, {"loss": loss, **metrics}


def jit_sft_step(model_config, tx, mesh):
    """`sft_step` jitted with the RL learner's state shardings, state donated."""
    shardings = learner.state_shardings(model_config, tx, mesh)
    return jax.jit(
        functools.partial(sft_step, model_config=model_config, tx=tx),
        in_shardings=(shardings, sharding_lib.batch_sharding(mesh)),
        out_shardings=(shardings, sharding_lib.replicated(mesh)),
        donate_argnums=0,
    )


def heldout_loss(nll_fn, params, pairs, rows_per_call, prompt_len, response_len, pad):
    """Token-mean NLL of `pairs` in fixed-size calls (one compile)."""
    total = count = 0.0
    for i in range(0, len(pairs), rows_per_call):
        chunk = pairs[i : i + rows_per_call]
        batch = make_batch(chunk, prompt_len, response_len, pad)
        # Fill the last call with rows that carry no loss, for a fixed shape.
        short = rows_per_call - len(chunk)
        if short:
            batch = make_batch(
                chunk + [chunk[0]] * short, prompt_len, response_len, pad
            )
            batch["loss_mask"][len(chunk) :] = False
        t, c = nll_fn(params, batch)
        total, count = total + float(t), count + float(c)
    return total / max(count, 1.0)


# ---------------------------------------------------------------------- run
def _rows(path: str, limit: int = 0) -> list[dict]:
    rows = io_lib.read_jsonl(data_lib.resolve_source(path))
    missing = [i for i, r in enumerate(rows) if "solution" not in r]
    if missing:
        raise ValueError(f"{path}: rows {missing[:5]} have no `solution` to learn")
    return rows[:limit] if limit else rows


def run(config, workdir: str) -> dict[str, float]:
    """Fine-tunes as `config` says into `workdir`; returns the last metrics."""
    for line in build.check_config(config):
        print(line, flush=True)
    build.check_resume(config, workdir)
    mesh = build.mesh(config)
    tokenizer, model_config, hf_path = build.tokenizer_and_model(config)
    tx = build.optimizer(config)
    pad = tokenizer.pad_token_id or 0
    response_len = config.rollout.max_new_tokens

    # ------------------------------------------------------------- data
    train_rows = _rows(config.data.train_path)
    pairs = encode_pairs(
        tokenizer, train_rows, config.data.max_prompt_len, response_len
    )
    # One width for every batch (one compile): the smallest bucket that
    # holds every prompt, train and held-out alike.
    sets = build.eval_sets(config, tokenizer)
    eval_pairs = {
        s.name: encode_pairs(
            tokenizer,
            _rows(path.strip(), config.eval.max_examples),
            config.data.max_prompt_len,
            response_len,
        )
        for s, path in zip(sets, config.eval.path.split(","), strict=True)
    }
    longest = max(len(p) for ps in [pairs, *eval_pairs.values()] for p, _ in ps)
    prompt_len = min(b for b in config.data.prompt_buckets if b >= longest)
    batches = data_lib.Batches(
        pairs, config.train.batch_size, config.seed, shuffle=config.data.shuffle
    )

    # ---------------------------------------------------- state, restore
    param_shardings = sharding_lib.tree_shardings(
        model_lib.abstract_params(model_config), mesh
    )
    initial = build.initial_params(config, model_config, hf_path, param_shardings)
    checkpointer = ckpt_lib.Checkpointer(
        ckpt_lib.checkpoint_dir(workdir),
        keep=config.checkpoint.keep,
        async_save=config.checkpoint.async_save,
    )
    state, start, meta = build.start_state(
        checkpointer, model_config, tx, mesh, initial
    )
    restored = meta is not None
    if restored:
        batches.restore(meta["data"])
    del initial
    step_fn = jit_sft_step(model_config, tx, mesh)
    nll_fn = jax.jit(functools.partial(nll_sums, model_config))

    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    train_lib.record_launch(config, workdir, start)
    if not restored:
        tokenizer_lib.save(tokenizer, epath.Path(workdir) / "tokenizer")
    writer = metrics_lib.MetricsWriter(
        workdir,
        resume_step=start if restored else None,
        tensorboard=config.log.tensorboard,
    )
    pool = reward_lib.RewardPool(
        workers=config.log.checker_workers or None,
        timeout_s=config.log.checker_timeout_s,
    )
    greedy = build.eval_sampling_settings(config, model_config, pad)
    print(
        f"sft: {len(pairs)} solutions from {config.data.train_path}, rows "
        f"{prompt_len}+{response_len} tokens; {config.train.steps} steps of "
        f"{config.train.batch_size}; eval: {', '.join(eval_pairs) or 'none'}",
        flush=True,
    )

    def evaluate() -> dict[str, float]:
        out = {
            f"eval/{name}/loss": heldout_loss(
                nll_fn,
                state.params,
                ps,
                config.eval.chunk_size,
                prompt_len,
                response_len,
                pad,
            )
            for name, ps in eval_pairs.items()
        }
        if not config.eval.max_new_tokens:  # 0: held-out loss only
            return out
        out.update(
            train_lib.evaluate(
                model_config,
                state.params,
                sets,
                greedy,
                tokenizer,
                pool,
                buckets=(prompt_len,),
                chunk=build.eval_chunk(config, sum(len(s.examples) for s in sets)),
                mesh=mesh,
            )
        )
        return out

    def save(step: int) -> None:
        meta = {
            "data": batches.state(),
            "accuracy_history": {},
            "model_config": ckpt_lib.config_to_meta(model_config),
            "seed": config.seed,
        }
        rest = {k: v for k, v in state._asdict().items() if k != "params"}
        checkpointer.save(step, state.params, rest, meta)

    progress = metrics_lib.Progress(config.train.steps, start)
    last: dict[str, float] = {}
    t_run = time.time()
    try:
        if not restored:
            m = evaluate() if sets else {}
            writer.write(0, m)
            progress.update(0, m)
            save(0)
        for step in range(start + 1, config.train.steps + 1):
            t0 = time.time()
            batch = make_batch(batches.next(), prompt_len, response_len, pad)
            state, learn = step_fn(state, sharding_lib.shard_batch(mesh, batch))
            m = {
                "loss/sft": float(learn["loss"]),
                "grad_norm": float(learn["grad_norm"]),
                "time/step_s": time.time() - t0,
            }
            if sets and config.eval.every and step % config.eval.every == 0:
                m.update(evaluate())
            writer.write(step, m)
            progress.update(step, m)
            last = m
            if step % config.checkpoint.every == 0 or step == config.train.steps:
                save(step)
        checkpointer.wait()
    finally:
        pool.close()
        writer.close()
        checkpointer.close()
    print(f"sft done in {(time.time() - t_run) / 60:.1f} min: {workdir}", flush=True)
    return last


# ----------------------------------------------------------------- command
_CONFIG = config_flags.DEFINE_config_file("config", None, "SFT config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")


def main(argv) -> None:
    del argv
    metrics_lib.quiet_library_logs()
    run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
