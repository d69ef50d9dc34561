"""The training loop (GRPO, or PPO with a critic), top to bottom.

    objects from the config (`build`) → initial params → restore
    → loop { sample → decode → score → advantages → update → log → eval → save }

With `algorithm.adv_estimator="gae"` (PPO) the advantages come from the
critic: its values of the step's packed batch, GAE in veRL's layout
(`rlvr_jax.learner.ppo`), a critic update, then the actor's (`ppo_update`);
the critic's state is checkpointed with the actor's and exported beside it.

Per step t (0-based, t updates already applied): the policy samples `n`
responses to each of `batch_size` prompts (each prompt row is its own GRPO
group), the reward pool scores them, `learner.train_step` applies one AdamW
update on the whole batch (one mini-batch, one epoch: on-policy), and the step
is logged as t + 1. Evaluation and checkpoints happen at multiples of their
intervals, including step 0 (before the first update).

Everything random derives from `config.seed`: the data order (numpy, seeded
per epoch), the sampling keys (`fold_in(key(seed), t)`) and the "random"
reward kind's draws (keyed by seed, t and the response's row), so a run
resumed from a checkpoint replays exactly the batches, samples and rewards it
would have drawn.

`reward.kind` picks what a response earns: its correctness (the paper), or a
control of "Spurious Rewards" (format only, random, correct-or-format;
`reward.RewardKind`). Whatever the kind, every step logs `reward/format_rate`
and, for a control, `reward/correct_rate`: the real accuracy beside the reward
the run was trained on.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time

import jax
import numpy as np
from etils import epath
from ml_collections import config_dict

from rlvr_jax import build, learner
from rlvr_jax import checkpoint as ckpt_lib
from rlvr_jax import io as io_lib
from rlvr_jax import metrics as metrics_lib
from rlvr_jax import plan as plan_lib
from rlvr_jax import reward as reward_lib
from rlvr_jax import sharding as sharding_lib
from rlvr_jax.data import examples as data_lib
from rlvr_jax.data import tokenizer as tokenizer_lib
from rlvr_jax.io import CONFIG_FILE, HISTORY_FILE
from rlvr_jax.learner import critic as critic_lib
from rlvr_jax.learner import packing
from rlvr_jax.learner import ppo as ppo_lib
from rlvr_jax.model import decoder
from rlvr_jax.model import params as params_lib
from rlvr_jax.reward import checker
from rlvr_jax.rollout import engine, sampling


class Preempted(Exception):
    """Raised after a SIGTERM-triggered checkpoint, to exit cleanly."""


# ---------------------------------------------------------------- evaluation
def evaluate(
    model_config,
    params,
    sets,
    settings,
    tokenizer,
    pool,
    *,
    chunk,
    buckets=None,
    **rollout_kwargs,
) -> dict[str, float]:
    """Greedy accuracy and mean response length of every set.

    The sets' prompts are sampled together, `chunk` prompts a call
    (`engine.rollout_in_calls`: one program for every call), each prompt
    left-padded to the bucket of the longest evaluation prompt. `settings`
    are the greedy eval sampling settings; `rollout_kwargs` go to the
    rollout (mesh, decode_sharding).
    """
    if not sets:
        return {}
    t0 = time.time()
    prompts = [p for s in sets for p in s.prompts]
    width = sampling.bucket_width(max(map(len, prompts)), buckets)
    roll = engine.rollout_in_calls(
        model_config,
        params,
        prompts,
        settings,
        jax.random.key(0),
        per_call=chunk,
        slots=chunk,
        buckets=(width,),
        **rollout_kwargs,
    )
    texts = tokenizer_lib.decode_responses(tokenizer, roll)
    lengths = roll.lengths
    golds = [ex.ground_truth for s in sets for ex in s.examples]
    rewards = np.asarray(pool.score(texts, golds).rewards, np.float32)
    out, start = {}, 0
    for s in sets:
        end = start + len(s.examples)
        out[f"eval/{s.name}/acc"] = float(np.mean(rewards[start:end]))
        out[f"eval/{s.name}/response_len"] = float(lengths[start:end].mean())
        start = end
    out["time/eval_s"] = time.time() - t0
    return out


# ------------------------------------------------------------------- metrics
def _rollout_metrics(roll, scored, kind, examples, n, history) -> dict[str, float]:
    lengths = roll.lengths
    rewards = np.asarray(scored.rewards, np.float32)
    correct = np.asarray(scored.correct, np.float32)
    out = {
        "reward/mean": float(np.mean(rewards)),
        "reward/std": float(np.std(rewards)),
        # Format apart from correctness, whatever the run is paid for.
        "reward/format_rate": float(np.mean(scored.well_formed)),
        "response_len/mean": float(lengths.mean()),
        "response_len/min": float(lengths.min()),
        "response_len/max": float(lengths.max()),
        "response_len/truncated_frac": float(roll.truncated.mean()),
    }
    if kind.kind != "correct":  # a control: its real accuracy beside its reward
        out["reward/correct_rate"] = float(np.mean(correct))
    # Accuracy per distinct example this step, appended to its history (the
    # historical-variance selection reads one value per time it was sampled):
    # correctness, not a control's reward.
    per_example: dict[int, list[float]] = {}
    for i, ex in enumerate(examples):
        per_example.setdefault(ex.index, []).extend(correct[i * n : (i + 1) * n])
    for index, values in per_example.items():
        acc = float(np.mean(values))
        out[f"train_acc/{index}"] = acc
        history.setdefault(str(index), []).append(acc)
    return out


def _write_history(workdir: str, history: dict) -> None:
    if jax.process_index() == 0:
        io_lib.write_atomic(epath.Path(workdir) / HISTORY_FILE, json.dumps(history))


def check_think_decodes(tokenizer) -> None:
    """Raises ValueError when decoding would drop `</think>` from responses.

    The reward reads responses decoded without special tokens
    (`tokenizer.decode_responses`); were `</think>` a special token of
    `tokenizer`, no response would close its thinking and, under
    `reward.think`, every reward would be 0.
    """
    ids = tokenizer.encode(checker.THINK_END, add_special_tokens=False)
    if tokenizer.decode(ids, skip_special_tokens=True) != checker.THINK_END:
        raise ValueError(
            f"reward.think: the tokenizer decodes {checker.THINK_END!r} to "
            f"{tokenizer.decode(ids, skip_special_tokens=True)!r} (a special "
            "token is dropped from responses): every reward would be 0"
        )


# ----------------------------------------------------------------------- PPO
# The random stream of the critic's fresh value head: fold_in(key(seed), this).
CRITIC_HEAD_STREAM = 0xC2171C
# PPO's critic exports (`params.save_critic_hf`): <workdir>/hf_critic/step_<n>,
# beside the policy's hf/step_<n> (which evaluation sweeps).
CRITIC_EXPORT_DIR = "hf_critic"


def ppo_update(
    config,
    critic_state,
    state,
    batch,
    host_batch,
    rewards,
    lengths,
    mesh,
    *,
    values_fn,
    logprobs_fn,
    critic_step,
    critic_lr,
):
    """PPO's part of a step, veRL's order: the critic's values of the
    step's batch, (the KL in the reward,) GAE, then one critic update.

    Returns (critic_state, the actor's batch with its GAE advantages,
    metrics under veRL's names). The values come from the critic before its
    update (V_old); every process gathers them and computes the same
    advantages (`rlvr_jax.learner.ppo`), then feeds its own rows.
    """
    a = config.algorithm
    values = sharding_lib.to_host(values_fn(critic_state.params, batch))
    kl = None
    if a.kl_in_reward:
        # π_old: the policy that sampled, before this step's update.
        kl = ppo_lib.KLInReward(
            logp=sharding_lib.to_host(logprobs_fn(state.params, batch)),
            ref_logp=sharding_lib.to_host(batch["ref_logp"]),
            coef=a.kl_ctrl.kl_coef,
            kind=a.kl_penalty,
        )
    arrays, metrics = ppo_lib.targets(
        host_batch,
        values,
        rewards,
        lengths,
        config.rollout.max_new_tokens,
        gamma=a.gamma,
        lam=a.lam,
        kl=kl,
    )
    placed = sharding_lib.shard_batch(
        mesh, {k: sharding_lib.process_rows(v) for k, v in arrays.items()}
    )
    batch = dict(batch, advantages=placed["advantages"])
    critic_batch = {k: batch[k] for k in critic_lib.VALUE_INPUTS if k in batch}
    critic_batch.update({k: placed[k] for k in critic_lib.CRITIC_TARGETS})
    applied = sharding_lib.local_value(critic_state.step) - sharding_lib.local_value(
        critic_state.skipped
    )
    lr = float(critic_lr(applied))
    critic_state, learn = critic_step(critic_state, critic_batch)
    learn = jax.tree.map(sharding_lib.local_value, learn)
    metrics.update(
        {
            "critic/vf_loss": float(learn["vf_loss"]),
            "critic/vf_clipfrac": float(learn["vf_clipfrac"]),
            "critic/vpred_mean": float(learn["vpred_mean"]),
            "critic/grad_norm": float(learn["grad_norm"]),
            "critic/update_ratio": float(learn["update_ratio"]),
            "critic/skipped_updates": float(learn["skipped_total"]),
            "critic/lr": lr,
        }
    )
    return critic_state, batch, metrics


# ------------------------------------------------------------------ fit check
def check_fits(config, model_config) -> None:
    """Fails fast, before any weights exist, when the run cannot fit its chips.

    On accelerators, compiles the step's programs for the local devices
    (`rlvr_jax.plan`, memory only: no cost programs) and raises ValueError
    with the plan's verdict and the overrides it found to fit. Skipped on
    CPU: host memory is not what limits a CPU run, and the compiles would
    double the start-up time of a tiny run.
    """
    if jax.devices()[0].platform == "cpu":
        return
    p = plan_lib.plan(config, model=model_config, costs=False)
    if p.fits:
        return
    fix = " ".join(f"--config.{k}={v}" for k, v in p.overrides.items())
    raise ValueError(
        f"this run {p.verdict()} on {p.topology} (peak "
        f"{p.peak_bytes_per_chip / 1e9:.2f} GB of {p.hbm_bytes_per_chip / 1e9:.2f}"
        f" GB per chip); "
        + (f"it fits with {fix}" if fix else "no override the planner tried fits")
        + " (python -m rlvr_jax.plan shows the details)"
    )


# ---------------------------------------------------------------- guards
LAUNCHES_FILE = "launches.jsonl"  # one row per launch of a workdir's run


def record_launch(config, workdir: str, step: int) -> None:
    """Keeps the first launch's config as the run's record (`CONFIG_FILE`,
    what a resume is checked against) and appends every launch, with its
    config and starting step, to `LAUNCHES_FILE`."""
    root = epath.Path(workdir)
    text = config.to_json_best_effort(indent=2)
    if not (root / CONFIG_FILE).exists():
        io_lib.write_atomic(root / CONFIG_FILE, text)
    rows = io_lib.read_log(root / LAUNCHES_FILE)
    rows.append(
        {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "start_step": step,
            "processes": jax.process_count(),
            "config": json.loads(text),
        }
    )
    io_lib.write_jsonl(root / LAUNCHES_FILE, rows)


def check_architecture(checkpointer, model_config) -> None:
    """Refuses a workdir whose newest checkpoint holds another architecture
    (a changed model accepted by `resume.allow_changes` still cannot load)."""
    step = checkpointer.latest_step()
    if step is None:
        return
    try:
        saved = ckpt_lib.config_from_meta(
            checkpointer.restore_meta(step)["model_config"]
        )
    except Exception:  # noqa: BLE001 - an unreadable step: start_state decides
        return
    a, b = build.architecture(saved), build.architecture(model_config)
    if a != b:
        diff = [
            f"{f.name} {getattr(a, f.name)!r} -> {getattr(b, f.name)!r}"
            for f in dataclasses.fields(a)
            if getattr(a, f.name) != getattr(b, f.name)
        ]
        raise ValueError(
            f"{checkpointer.directory}/{step} holds another architecture than "
            f"this config's ({', '.join(diff)}): use another --workdir"
        )


class Guard:
    """Stops a run going nowhere and reports a runaway update.

    `stuck` (a message) after `max_skipped` consecutive updates were skipped
    for a non-finite loss or gradient; `outlier` when an update's size
    relative to the weights (`update_ratio`) is above 1 or 10× the median of
    the run's earlier ones (said once per step on the console).
    """

    def __init__(self, max_skipped: int, say):
        self.max_skipped, self.say = max_skipped, say
        self.skipped_run = 0
        self.ratios: list[float] = []
        self.stuck = ""
        self.outlier = False

    def update(self, step: int, learn: dict) -> None:
        self.skipped_run = self.skipped_run + 1 if learn["skipped"] else 0
        if self.skipped_run >= self.max_skipped:
            self.stuck = (
                f"the last {self.skipped_run} updates (to step {step}) were all "
                "skipped: the loss or gradient norm was not finite (grad_norm "
                f"{float(learn['grad_norm']):.3g}); train.max_skipped_updates="
                f"{self.max_skipped}"
            )
        ratio = float(learn["update_ratio"])
        self.outlier = False
        if learn["skipped"]:
            return
        typical = float(np.median(self.ratios)) if len(self.ratios) >= 5 else None
        if ratio > 1 or (typical and ratio > 10 * typical):
            self.outlier = True
            self.say(
                f"warning: step {step}'s update moved the weights by {ratio:.3g} of "
                "their norm"
                + (f", {ratio / typical:.0f}x the run's median" if typical else "")
            )
        self.ratios.append(ratio)


# ----------------------------------------------------------------------- run
def run(config: config_dict.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains as `config` says, checkpointing and logging into `workdir`.

    Returns the metrics of the last step. Raises `Preempted` after saving when
    a SIGTERM arrived.
    """
    # ---------------------------------------------------- checks, mesh
    warnings = build.check_config(config)  # before anything is read or written
    mesh = build.mesh(config)

    # -------------------------------------------- tokenizer, model, checks
    tokenizer, model_config, hf_path = build.tokenizer_and_model(config)
    build.validate(config, model_config, mesh)
    if config.reward.think:
        check_think_decodes(tokenizer)
    check_fits(config, model_config)
    learner_config = build.learner_config(config, mesh, model_config)
    tx = build.optimizer(config)
    # PPO (algorithm.adv_estimator="gae"): a critic beside the policy.
    ppo = build.uses_critic(config)
    critic_tx = build.critic_optimizer(config) if ppo else None
    critic_cfg = build.critic_config(config, learner_config) if ppo else None
    lr_schedule = build.lr_schedule(config)
    pad_id = tokenizer.pad_token_id or 0
    settings = build.sampling_settings(config, model_config, pad_id)
    eval_settings = build.eval_sampling_settings(config, model_config, pad_id)

    def say(line: str) -> None:  # one console line per phase, process 0 only
        if jax.process_index() == 0:
            print(line, flush=True)

    for line in warnings:
        say(line)

    t_run = time.time()
    # ------------------------------------------------------------------ data
    examples = build.train_examples(config)
    batches = data_lib.Batches(
        examples, config.train.batch_size, config.seed, shuffle=config.data.shuffle
    )
    # Tokenise every distinct prompt once up front: a too-long prompt fails
    # here, before any work, naming its example.
    distinct = {ex.index: ex for ex in examples}
    prompt_ids = dict(
        zip(
            distinct,
            data_lib.encode_prompts(
                tokenizer, list(distinct.values()), config.data.max_prompt_len
            ),
            strict=True,
        )
    )
    sets = build.eval_sets(config, tokenizer)
    build.check_resume(config, workdir)  # reads the workdir; writes nothing
    say(
        f"data: {len(examples)} rows of {len(distinct)} distinct example(s) from "
        f"{config.data.train_path or 'the built-in task'}; eval: "
        + (
            ", ".join(f"{s.name} ({len(s.examples)} problems)" for s in sets)
            + f", every {config.eval.every} steps"
            if sets
            else "none"
        )
    )

    # ---------------------------------------------- initial params and state
    param_shardings = sharding_lib.tree_shardings(
        decoder.abstract_params(model_config), mesh
    )
    reference = build.initial_params(config, model_config, hf_path, param_shardings)
    n_params = sum(x.size for x in jax.tree.leaves(reference))
    say(
        f"model: {config.checkpoint.resume_from or hf_path or 'random ' + config.model.preset} "
        f"({n_params / 1e6:.1f}M parameters, {model_config.dtype} compute), "
        f"mesh {dict(mesh.shape)}, {config.train.steps} steps of "
        f"{config.train.batch_size} prompts x {config.rollout.n} responses"
    )
    checkpointer = ckpt_lib.Checkpointer(
        ckpt_lib.checkpoint_dir(workdir),
        keep=config.checkpoint.keep,
        async_save=config.checkpoint.async_save,
    )
    history: dict[str, list[float]] = {}
    check_architecture(checkpointer, model_config)
    state, critic_state, start, meta = build.start_states(
        checkpointer,
        model_config,
        tx,
        mesh,
        reference,
        critic_tx,
        jax.random.fold_in(jax.random.key(config.seed), CRITIC_HEAD_STREAM),
    )
    restored = meta is not None
    if restored:
        batches.restore(meta["data"])
        history = meta["accuracy_history"]
        say(f"resumed from {checkpointer.directory} at step {start}")
    if not build.uses_reference(config):
        reference = None  # no KL term: free the memory
    else:
        # The model casts every matmul weight to the compute dtype at use, so
        # a compute-dtype copy gives the same log-probs in half the memory.
        reference = sampling.compute_dtype_params(model_config, reference)
        if config.train.reference_on_host:
            reference = sharding_lib.to_memory(reference, "pinned_host")
    # The sampler's mesh (the learner's, or a tensor split of the same
    # devices: rollout.decode_mesh) and where its packed weights live.
    decode_mesh, _, decode_sharding = build.decode_layout(config, mesh, model_config)
    paging = build.paging(config, settings, sharding_lib.batch_divisor(decode_mesh))
    train_step = learner.jit_train_step(model_config, learner_config, tx, mesh)
    logprobs_fn = learner.jit_logprobs(model_config, learner_config, mesh)
    if ppo:
        critic_step = critic_lib.jit_train_step(
            model_config, critic_cfg, critic_tx, mesh
        )
        values_fn = critic_lib.jit_values(model_config, critic_cfg, mesh)
        critic_lr = build.critic_lr_schedule(config)

    # -------------------------------------------------------------- workdir
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        record_launch(config, workdir, start)
    if jax.process_index() == 0 and not restored:
        # Checkpoint sweeps (python -m rlvr_jax.evaluate) decode with this.
        tokenizer_lib.save(tokenizer, epath.Path(workdir) / "tokenizer")
    writer = metrics_lib.MetricsWriter(
        workdir,
        resume_step=start if restored else None,
        tensorboard=config.log.tensorboard,
        wandb_project=config.log.wandb_project,
        run_config=config.to_dict(),
    )
    samples = metrics_lib.SamplesWriter(
        workdir,
        config.log.samples_every,
        config.log.samples_count,
        resume_step=start if restored else None,
    )
    lengths_log = metrics_lib.LengthsWriter(
        workdir, resume_step=start if restored else None
    )
    progress = metrics_lib.Progress(config.train.steps, start)
    # The think rule holds for the rewards and the in-loop evaluation alike,
    # as the reference grades both with one function.
    pool = reward_lib.RewardPool(
        workers=config.log.checker_workers or None,
        timeout_s=config.log.checker_timeout_s,
        think=config.reward.think,
    )
    # What a training response earns; evaluation always grades correctness.
    kind = reward_lib.RewardKind(
        config.reward.kind,
        random_p=config.reward.random_p,
        format_value=config.reward.format_value,
        seed=config.seed,
    )

    sigterm = threading.Event()
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: sigterm.set())

    def save(step: int) -> None:
        meta = {
            "data": batches.state(),
            "accuracy_history": history,
            "model_config": ckpt_lib.config_to_meta(model_config),
            "seed": config.seed,
        }
        train_items = {k: v for k, v in state._asdict().items() if k != "params"}
        if ppo:
            train_items[build.CRITIC_ITEM] = critic_state._asdict()
        checkpointer.save(step, state.params, train_items, meta)
        _write_history(workdir, history)
        if (
            config.checkpoint.export_hf_every
            and step % config.checkpoint.export_hf_every == 0
        ):
            export(step)

    def export(step: int) -> None:
        params = state.params
        values = critic_state.params if ppo else None
        if jax.process_count() > 1:
            # fsdp shards live on every host: all processes gather the whole
            # tree (a collective, host memory of one fp32 copy), one writes.
            params = sharding_lib.to_host(params)
            values = None if values is None else sharding_lib.to_host(values)
        if jax.process_index() != 0:
            return
        out = epath.Path(workdir) / "hf" / f"step_{step}"
        with io_lib.local_dir(out) as local:
            params_lib.save_hf(local, model_config, params)
            tokenizer.save_pretrained(local)
        if values is not None:  # PPO: the critic beside it, for transformers
            out = epath.Path(workdir) / CRITIC_EXPORT_DIR / f"step_{step}"
            with io_lib.local_dir(out) as local:
                params_lib.save_critic_hf(local, model_config, values)

    def run_eval() -> dict[str, float]:
        return evaluate(
            model_config,
            state.params,
            sets,
            eval_settings,
            tokenizer,
            pool,
            chunk=build.eval_chunk(config, sum(len(s.examples) for s in sets)),
            buckets=config.data.prompt_buckets,
            mesh=decode_mesh,
            decode_sharding=decode_sharding,
        )

    guard = Guard(config.train.max_skipped_updates, say)
    last: dict[str, float] = {}
    try:
        step = start
        if not restored:
            metrics0 = run_eval()
            if metrics0:
                writer.write(0, metrics0)
                progress.update(0, metrics0)
            save(0)
        base_key = jax.random.key(config.seed)
        while step < config.train.steps:
            t_step = time.time()
            # -------------------------------------------------------- sample
            batch_examples = batches.next()
            t0 = time.time()
            roll = engine.rollout(
                model_config,
                state.params,
                [prompt_ids[ex.index] for ex in batch_examples],
                settings,
                jax.random.fold_in(base_key, step),
                buckets=config.data.prompt_buckets,
                slots=config.rollout.chunk_size,
                mesh=decode_mesh,
                decode_sharding=decode_sharding,
                paging=paging,
            )
            t_sample = time.time() - t0
            # --------------------------------------------------------- score
            t0 = time.time()
            texts = tokenizer_lib.decode_responses(tokenizer, roll)
            golds = [
                ex.ground_truth for ex in batch_examples for _ in range(settings.n)
            ]
            # Every process holds and scores the whole step (`texts` is
            # gathered from all hosts), so a response's position in it is its
            # global row: the "random" kind draws the same rewards whatever
            # the number of processes.
            scored = pool.score(texts, golds, kind=kind, step=step, row_offset=0)
            rewards = np.asarray(scored.rewards, np.float32)
            t_score = time.time() - t0
            # ---------------------------------------------------- advantages
            if ppo:  # GAE from the critic's values, below, once packed
                adv = np.zeros(len(rewards), np.float32)
            else:
                adv = np.asarray(
                    learner.advantages(
                        rewards,
                        settings.n,
                        eps=config.loss.adv_eps,
                        norm_by_std=config.loss.norm_adv_by_std,
                    )
                )
            # -------------------------------------------------------- update
            t0 = time.time()
            host_batch = packing.learner_batch(
                roll,
                adv,
                learner_config,
                limit=build.learner_width(config),
                divisor=sharding_lib.batch_divisor(mesh),
            )
            batch = sharding_lib.shard_batch(
                mesh, jax.tree.map(sharding_lib.process_rows, host_batch)
            )
            if reference is not None:
                ref = reference
                if config.train.reference_on_host:  # on the chips for this pass only
                    ref = sharding_lib.to_memory(reference, "device")
                batch["ref_logp"] = logprobs_fn(ref, batch)
                del ref
            critic_m: dict[str, float] = {}
            if ppo:
                t1 = time.time()
                critic_state, batch, critic_m = ppo_update(
                    config,
                    critic_state,
                    state,
                    batch,
                    host_batch,
                    rewards,
                    roll.lengths,
                    mesh,
                    values_fn=values_fn,
                    logprobs_fn=logprobs_fn,
                    critic_step=critic_step,
                    critic_lr=critic_lr,
                )
                critic_m["time/critic_s"] = time.time() - t1
            applied = sharding_lib.local_value(state.step) - sharding_lib.local_value(
                state.skipped
            )
            lr = float(lr_schedule(applied))
            learn = None
            if not ppo or config.critic.warmup <= step + 1:
                state, learn = train_step(state, batch)
                learn = jax.tree.map(sharding_lib.local_value, learn)
            t_learn = time.time() - t0
            step += 1
            if learn is not None:
                guard.update(step, learn)
            # ----------------------------------------------------------- log
            generated = int(roll.lengths.sum())
            m = _rollout_metrics(
                roll, scored, kind, batch_examples, settings.n, history
            )
            samples.write(step, texts, roll, scored, batch_examples, settings.n)
            lengths_log.write(step, roll.lengths, settings.n)
            m.update(critic_m)
            if learn is not None:  # no actor update in the critic's warm-up
                m.update(
                    {
                        "loss/total": learn["loss"],
                        "loss/pg": learn["pg_loss"],
                        "loss/entropy": learn["entropy"],
                        "loss/kl": learn["kl"],
                        "loss/clip_frac": learn["clip_frac"],
                        "loss/ppo_kl": learn["ppo_kl"],
                        "grad_norm": learn["grad_norm"],
                        "lr": lr,
                        "skipped_updates": learn["skipped_total"],
                        "update_ratio": learn["update_ratio"],
                    }
                )
            m.update(
                {
                    "warning/update_outlier": float(guard.outlier),
                    "checker/timeouts": scored.timeouts,
                    "checker/errors": scored.errors,
                    "time/sample_s": t_sample,
                    "time/score_s": t_score,
                    "time/learn_s": t_learn,
                    "learner/token_efficiency": packing.token_efficiency(host_batch),
                    "throughput/gen_tokens_per_s": generated / max(t_sample, 1e-9),
                    "rollout/slot_efficiency": roll.slot_efficiency,
                    "rollout/preemptions": roll.preemptions,
                }
            )
            if config.reward.think:
                m["reward/think_closed_rate"] = 1.0 - scored.unclosed / len(texts)
            # ------------------------------------------------ eval and save
            if config.eval.every and step % config.eval.every == 0:
                m.update(run_eval())
            m["time/step_s"] = time.time() - t_step
            writer.write(step, m)
            progress.update(step, m)
            last = m
            if step % config.checkpoint.every == 0 or step == config.train.steps:
                save(step)
            if guard.stuck:  # the last good state saved, then stop
                if step % config.checkpoint.every and step != config.train.steps:
                    save(step)
                checkpointer.wait()
                raise ValueError(guard.stuck + f"; state saved at step {step}")
            if sharding_lib.any_process(sigterm.is_set()):
                if step % config.checkpoint.every and step != config.train.steps:
                    save(step)
                checkpointer.wait()
                raise Preempted(
                    f"SIGTERM: saved step {step} to {checkpointer.directory}"
                )
        checkpointer.wait()
        if step == config.train.steps:
            export(step)
        say(_summary(step, last, workdir, time.time() - t_run))
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        pool.close()
        writer.close()
        checkpointer.close()
    return last


def _summary(step: int, last: dict, workdir: str, seconds: float) -> str:
    """The closing console line: where the run stands and where its files are."""
    parts = [f"done: step {step} in {seconds / 60:.1f} min"]
    if "reward/mean" in last:
        parts.append(f"last reward {last['reward/mean']:.3g}")
    parts += [
        f"{key[len('eval/') : -len('/acc')]} acc {value:.3g}"
        for key, value in last.items()
        if key.startswith("eval/") and key.endswith("/acc")
    ]
    parts.append(f"files in {workdir} (metrics.jsonl, checkpoints/, hf/)")
    return " | ".join(parts)
