"""The GRPO training loop, top to bottom. The only reader of the experiment config.

    mesh → tokenizer/model/initial params → data → optimizer/learner → restore
    → loop { sample → decode → score → advantages → update → log → eval → save }

Per step t (0-based, t updates already applied): the policy samples `n`
responses to each of `batch_size` prompts (each prompt row is its own GRPO
group), the reward pool scores them, `grpo.train_step` applies one AdamW
update on the whole batch (one mini-batch, one epoch: on-policy), and the step
is logged as t + 1. Evaluation and checkpoints happen at multiples of their
intervals, including step 0 (before the first update).

Everything random derives from `config.seed`: the data order (numpy, seeded
per epoch) and the sampling keys (`fold_in(key(seed), t)`), so a run resumed
from a checkpoint replays exactly the batches and samples it would have drawn.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import tempfile
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from ml_collections import config_dict

from rlvr_jax import checkpoint as ckpt_lib
from rlvr_jax import data as data_lib
from rlvr_jax import flash as flash_lib
from rlvr_jax import grpo, packing, paper_data
from rlvr_jax import io as io_lib
from rlvr_jax import metrics as metrics_lib
from rlvr_jax import model as model_lib
from rlvr_jax import optimizer as optimizer_lib
from rlvr_jax import params as params_lib
from rlvr_jax import reward as reward_lib
from rlvr_jax import sampler as sampler_lib
from rlvr_jax import sharding as sharding_lib
from rlvr_jax import tokenizer as tokenizer_lib
from rlvr_jax.io import CONFIG_FILE, HISTORY_FILE


class Preempted(Exception):
    """Raised after a SIGTERM-triggered checkpoint, to exit cleanly."""


# --------------------------------------------------------------- model source
RANDOM_PRESETS = ("tiny", "lab")  # random init, the character-level tokenizer


def random_preset(config) -> tuple[Any, model_lib.ModelConfig]:
    """(tokenizer, ModelConfig) of a random-init `model.preset`."""
    m = config.model
    if m.preset not in RANDOM_PRESETS:
        raise ValueError(f"unknown model.preset {m.preset!r} (known: {RANDOM_PRESETS})")
    tok = tokenizer_lib.build_tiny()
    # model.remat is the learner's (LearnerConfig.remat), not the model's.
    model_config = getattr(model_lib.ModelConfig, m.preset)(
        vocab_size=len(tok), eos_token_ids=tokenizer_lib.stop_token_ids(tok)
    ).replace(dtype=m.dtype, param_dtype=m.param_dtype)
    return tok, model_config


def _tokenizer_and_model_config(config) -> tuple[Any, model_lib.ModelConfig, str]:
    """(tokenizer, ModelConfig, HF dir or "") from the model section."""
    m = config.model
    if m.preset:
        return (*random_preset(config), "")
    # model.remat is the learner's (LearnerConfig.remat), not the model's.
    overrides = dict(dtype=m.dtype, param_dtype=m.param_dtype)
    path = params_lib.resolve_model_path(m.path)
    tok = tokenizer_lib.load(path)
    model_config = params_lib.read_config(path, **overrides)
    eos = tokenizer_lib.merged_eos_ids(model_config.eos_token_ids, tok)
    return tok, model_config.replace(eos_token_ids=eos), path


def _initial_params(config, model_config, hf_path, shardings):
    """The weights the run starts from (also the KL reference); see checkpoint.py."""
    if config.checkpoint.resume_from:
        try:
            saved_config, params = ckpt_lib.load_params(
                config.checkpoint.resume_from, shardings=shardings
            )
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 - orbax raises many kinds
            raise ValueError(
                f"checkpoint.resume_from={config.checkpoint.resume_from!r} is "
                f"unreadable ({e!r})"
            ) from e
        if _architecture(saved_config) != _architecture(model_config):
            raise ValueError(
                f"checkpoint.resume_from={config.checkpoint.resume_from!r} holds a "
                f"different architecture: {saved_config}"
            )
        return params
    if hf_path:
        _, params = params_lib.load_hf(
            hf_path,
            jnp.dtype(model_config.param_dtype),
            compute_dtype=model_config.dtype,
            shardings=shardings,
        )
        return params
    init = lambda key: model_lib.init_params(model_config, key)
    return jax.jit(init, out_shardings=shardings)(jax.random.key(config.seed))


def _architecture(c: model_lib.ModelConfig) -> model_lib.ModelConfig:
    """The config with run-time choices (dtypes, remat, attention kernel, stop
    tokens) blanked."""
    return c.replace(
        dtype="float32",
        param_dtype="float32",
        remat=False,
        attention_kernel="xla",
        eos_token_ids=(),
    )


# ---------------------------------------------------------------------- data
def _train_examples(config) -> list[data_lib.Example]:
    d = config.data
    if d.train_path:
        examples = data_lib.load_examples(d.train_path)
        if d.indices:
            examples = data_lib.select(examples, list(d.indices))
    elif d.indices:
        # Without a pool the built-in task would silently replace the chosen
        # examples: a 1.5B run would train on "3 + 4" instead of π1.
        raise ValueError(
            f"data.indices={tuple(d.indices)} selects examples from a pool, but "
            "data.train_path is empty; set --config.data.train_path=dsr_sub (the "
            "packaged pool) or a file, or --config.data.indices='()' for the "
            "built-in task"
        )
    else:
        examples = data_lib.builtin_task()
    if d.replicate:
        examples = data_lib.replicate(examples, d.replicate)
    return examples


def _eval_name(path: str) -> str:
    if path == "builtin" or path in paper_data.FILES:
        return path
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return parent or os.path.splitext(os.path.basename(path))[0]


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """One held-out set of `eval.path`: its metric name, examples, prompt ids."""

    name: str
    examples: list[data_lib.Example]
    prompts: list[list[int]]


def eval_sets(config, tokenizer) -> list[EvalSet]:
    """The sets `eval.path` names (comma-separated), each logged on its own.

    Raises:
      ValueError: when two sets would log under the same name.
    """
    sets = []
    for path in filter(None, (p.strip() for p in config.eval.path.split(","))):
        if path == "builtin":
            examples = data_lib.builtin_task()
        else:
            examples = data_lib.load_examples(path)
        if config.eval.max_examples:
            examples = examples[: config.eval.max_examples]
        prompts = data_lib.encode_prompts(
            tokenizer, examples, config.data.max_prompt_len
        )
        sets.append(EvalSet(_eval_name(path), examples, prompts))
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(
            f"eval.path={config.eval.path!r}: two sets share a metric name "
            f"({names}); a file is named by its parent directory"
        )
    return sets


def evaluate(
    model_config, params, sets, settings, tokenizer, pool, **rollout_kwargs
) -> dict[str, float]:
    """Greedy accuracy and mean response length of every set, in one rollout.

    `settings` are the greedy eval sampling settings; `rollout_kwargs` go to
    `sampler.rollout` (buckets, slots, mesh, decode_sharding). The sets share
    one sampler call so that a few small sets cost one set's compile.
    """
    if not sets:
        return {}
    t0 = time.time()
    prompts = [p for s in sets for p in s.prompts]
    roll = sampler_lib.rollout(
        model_config, params, prompts, settings, jax.random.key(0), **rollout_kwargs
    )
    texts = tokenizer_lib.decode_responses(tokenizer, roll)
    golds = [ex.ground_truth for s in sets for ex in s.examples]
    rewards = np.asarray(pool.score(texts, golds).rewards, np.float32)
    out, start = {}, 0
    for s in sets:
        end = start + len(s.examples)
        out[f"eval/{s.name}/acc"] = float(np.mean(rewards[start:end]))
        out[f"eval/{s.name}/response_len"] = float(roll.lengths[start:end].mean())
        start = end
    out["time/eval_s"] = time.time() - t0
    return out


# ------------------------------------------------------------------- metrics
def _rollout_metrics(roll, rewards, examples, n, history) -> dict[str, float]:
    lengths = roll.lengths
    out = {
        "reward/mean": float(np.mean(rewards)),
        "reward/std": float(np.std(rewards)),
        "response_len/mean": float(lengths.mean()),
        "response_len/min": float(lengths.min()),
        "response_len/max": float(lengths.max()),
        "response_len/truncated_frac": float(roll.truncated.mean()),
    }
    # Accuracy per distinct example this step, appended to its history (the
    # historical-variance selection reads one value per time it was sampled).
    per_example: dict[int, list[float]] = {}
    for i, ex in enumerate(examples):
        per_example.setdefault(ex.index, []).extend(rewards[i * n : (i + 1) * n])
    for index, values in per_example.items():
        acc = float(np.mean(values))
        out[f"train_acc/{index}"] = acc
        history.setdefault(str(index), []).append(acc)
    return out


def _write_history(workdir: str, history: dict) -> None:
    if jax.process_index() == 0:
        io_lib.write_atomic(epath.Path(workdir) / HISTORY_FILE, json.dumps(history))


# ---------------------------------------------------------------- validation
def validate(config, model_config: model_lib.ModelConfig, mesh) -> None:
    """Config checks that must pass before anything touches the workdir."""
    t, r, d = config.train, config.rollout, config.data
    responses = t.batch_size * r.n
    divisor = sharding_lib.batch_divisor(mesh)
    if t.batch_size <= 0 or r.n <= 0:
        raise ValueError("train.batch_size and rollout.n must be positive")
    if responses % divisor:
        raise ValueError(
            f"train.batch_size × rollout.n = {responses} responses do not split "
            f"over the mesh's data×fsdp = {divisor} devices"
        )
    if responses % t.micro_batch_size:
        raise ValueError(
            f"train.micro_batch_size={t.micro_batch_size} does not divide the "
            f"{responses} responses of a step"
        )
    if t.micro_batch_size % divisor:
        raise ValueError(
            f"train.micro_batch_size={t.micro_batch_size} does not split over "
            f"data×fsdp = {divisor} devices"
        )
    attention_kernel(config, mesh, model_config)  # raises on a bad choice
    longest = max(d.prompt_buckets) + max(r.max_new_tokens, config.eval.max_new_tokens)
    if d.max_prompt_len > max(d.prompt_buckets):
        raise ValueError(
            f"data.max_prompt_len={d.max_prompt_len} exceeds the largest prompt "
            f"bucket {max(d.prompt_buckets)}"
        )
    if longest > model_config.max_seq_len:
        raise ValueError(
            f"prompt bucket {max(d.prompt_buckets)} + response "
            f"{max(r.max_new_tokens, config.eval.max_new_tokens)} tokens = {longest} "
            f"exceeds the model's context of {model_config.max_seq_len}"
        )
    if t.steps < 0:
        raise ValueError(f"train.steps must be >= 0, got {t.steps}")
    if t.logits_chunk <= 0:
        raise ValueError(f"train.logits_chunk must be positive, got {t.logits_chunk}")


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
    from rlvr_jax import plan as plan_lib

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


def decode_weights_sharding(config, mesh, model_config=None, hbm_bytes=None):
    """Placement of the sampler's decode weights (`rollout.decode_weights`).

    "replicated": a compute-dtype copy on every chip (decode steps read local
    weights); "sharded": split as the params are (None: the compiler follows
    them; each step gathers what it multiplies); "auto": replicated when that
    copy takes at most a quarter of a chip's memory (`hbm_bytes`, default:
    what the mesh's first device reports), else sharded; replicated when the
    memory (CPU) or the model is unknown. A quarter leaves the train state, the reference
    and the KV cache room: π1's 1.5B copy is 18% of a v5e chip, a 7B copy 88%.
    """
    choice = config.rollout.decode_weights
    if choice == "auto":
        choice = "replicated"
        if hbm_bytes is None:
            try:
                stats = mesh.devices.flat[0].memory_stats() or {}
            except jax.errors.JaxRuntimeError:  # a compile-only device
                stats = {}
            hbm_bytes = stats.get("bytes_limit")
        if hbm_bytes and model_config is not None:
            copy = model_lib.count_params(model_lib.abstract_params(model_config))
            copy *= jnp.dtype(model_config.dtype).itemsize
            if copy > hbm_bytes / 4:
                choice = "sharded"
    if choice == "replicated":
        return sharding_lib.replicated(mesh)
    if choice == "sharded":
        return None  # as the params are
    raise ValueError(
        f"rollout.decode_weights={choice!r}: expected 'auto', 'replicated' or 'sharded'"
    )


def _learner_width(config) -> int:
    """The widest learner row: the largest prompt bucket + the longest response."""
    return max(config.data.prompt_buckets) + config.rollout.max_new_tokens


def _learner_config(config, mesh=None, model=None) -> grpo.LearnerConfig:
    """The loss and learner settings.

    The micro-batch token budget (per device) is train.max_tokens_per_micro_batch
    or, when that is 0 and the mesh is given, micro_batch_size rows of the
    widest learner row shared over the data×fsdp devices: the same per-device
    memory as an unpacked micro-batch of micro_batch_size rows.
    """
    loss = config.loss
    max_tokens = config.train.max_tokens_per_micro_batch or None
    if max_tokens is None and mesh is not None:
        per_device = config.train.micro_batch_size // sharding_lib.batch_divisor(mesh)
        max_tokens = max(1, per_device) * _learner_width(config)
    return grpo.LearnerConfig(
        temperature=config.rollout.temperature,
        clip_eps=loss.clip_eps,
        clip_eps_high=loss.clip_eps_high,
        kl_coef=loss.kl_coef,
        kl_type=loss.kl_type,
        entropy_coef=loss.entropy_coef,
        pg_coef=loss.pg_coef,
        agg=loss.agg,
        micro_batch_size=config.train.micro_batch_size,
        max_tokens_per_micro_batch=max_tokens,
        recompute_old_logp=config.train.recompute_old_logp,
        remat=config.model.remat,
        logits_chunk=config.train.logits_chunk,
        attention_kernel=attention_kernel(config, mesh, model),
    )


ATTENTION_CHOICES = ("auto", *model_lib.ATTENTION_KERNELS)


def attention_kernel(config, mesh=None, model=None) -> str:
    """The learner's `ModelConfig.attention_kernel` for `model.attention`.

    "auto" is "flash" on TPUs where the kernel takes whole learner rows
    (`flash.supports`: the model's head dim, the widest learner row, the
    chip), else "xla" (no mesh: "xla"). An explicit "flash" off TPU is
    refused here, before anything is built: the kernel compiles for TPUs
    only.
    """
    choice = config.model.get("attention", "auto")
    if choice not in ATTENTION_CHOICES:
        raise ValueError(
            f"model.attention={choice!r}: expected one of {ATTENTION_CHOICES}"
        )
    platform = mesh.devices.flat[0].platform if mesh is not None else None
    if choice == "flash" and platform not in (None, "tpu"):
        raise ValueError(
            f"model.attention='flash' needs TPU devices, not {platform!r}: "
            "use 'auto' or 'xla'"
        )
    if choice != "auto":
        return choice
    if platform != "tpu":
        return "xla"
    head_dim = model.head_dim if model is not None else flash_lib.LANES
    kind = mesh.devices.flat[0].device_kind
    tiles = flash_lib.supports(head_dim, _learner_width(config), kind)
    return "flash" if tiles else "xla"


def _optimizer(config):
    o = config.optim
    return optimizer_lib.adamw(
        o.lr,
        b1=o.b1,
        b2=o.b2,
        eps=o.eps,
        weight_decay=o.weight_decay,
        warmup_steps=o.warmup_steps,
        first_step_zero_lr=o.first_step_zero_lr,
        decay_steps=o.decay_steps,
        decay_norms_and_biases=o.decay_norms_biases,
        grad_clip=o.grad_clip or None,
    )


# ----------------------------------------------------------------------- run
def run(config: config_dict.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains as `config` says, checkpointing and logging into `workdir`.

    Returns the metrics of the last step. Raises `Preempted` after saving when
    a SIGTERM arrived.
    """
    # ---------------------------------------------------------------- mesh
    mesh = sharding_lib.make_mesh(
        data=config.mesh.data, fsdp=config.mesh.fsdp, tensor=config.mesh.tensor
    )

    # -------------------------------------------- tokenizer, model, checks
    tokenizer, model_config, hf_path = _tokenizer_and_model_config(config)
    validate(config, model_config, mesh)
    check_fits(config, model_config)
    learner_config = _learner_config(config, mesh, model_config)
    tx = _optimizer(config)
    lr_schedule = optimizer_lib.schedule(
        config.optim.lr,
        config.optim.warmup_steps,
        config.optim.first_step_zero_lr,
        config.optim.decay_steps,
    )
    settings = sampler_lib.SamplingSettings(
        max_new_tokens=config.rollout.max_new_tokens,
        temperature=config.rollout.temperature,
        top_p=config.rollout.top_p,
        top_k=config.rollout.top_k,
        eos_ids=model_config.eos_token_ids,
        n=config.rollout.n,
        cache_dtype=config.rollout.cache_dtype,
        pad_id=tokenizer.pad_token_id or 0,
    )
    settings.check_against(model_config)
    eval_settings = sampler_lib.SamplingSettings(
        max_new_tokens=config.eval.max_new_tokens,
        temperature=0.0,
        eos_ids=model_config.eos_token_ids,
        cache_dtype=config.rollout.cache_dtype,
        pad_id=settings.pad_id,
    )

    def say(line: str) -> None:  # one console line per phase, process 0 only
        if jax.process_index() == 0:
            print(line, flush=True)

    t_run = time.time()
    # ------------------------------------------------------------------ data
    examples = _train_examples(config)
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
    sets = eval_sets(config, tokenizer)
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
        model_lib.abstract_params(model_config), mesh
    )
    reference = _initial_params(config, model_config, hf_path, param_shardings)
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
    start = checkpointer.latest_step()
    restored = start is not None
    if not restored:
        state = grpo.init_train_state(model_config, tx, mesh, params=reference)
        start = 0
    else:
        abstract = grpo.sharded_abstract_state(model_config, tx, mesh)
        train_abstract = {k: v for k, v in abstract._asdict().items() if k != "params"}
        try:
            params, train_items, meta = checkpointer.restore(
                start, abstract.params, train_abstract
            )
        except Exception as e:  # noqa: BLE001 - orbax raises many kinds
            raise ValueError(
                f"checkpoint {checkpointer.directory}/{start} is unreadable ({e!r}); "
                "move it aside to resume from an earlier step"
            ) from e
        state = grpo.TrainState(params=params, **train_items)
        batches.restore(meta["data"])
        history = meta["accuracy_history"]
        say(f"resumed from {checkpointer.directory} at step {start}")
    if config.loss.kl_coef == 0:
        reference = None  # no KL term: free the memory
    else:
        # The model casts every matmul weight to the compute dtype at use, so
        # a compute-dtype copy gives the same log-probs in half the memory.
        reference = sampler_lib.compute_dtype_params(model_config, reference)
        if config.train.reference_on_host:
            reference = sharding_lib.to_memory(reference, "pinned_host")
    decode_sharding = decode_weights_sharding(config, mesh, model_config)
    train_step = grpo.jit_train_step(model_config, learner_config, tx, mesh)
    logprobs_fn = grpo.jit_logprobs(model_config, learner_config, mesh)

    # -------------------------------------------------------------- workdir
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        # The full config of the latest launch, next to what it produced.
        io_lib.write_atomic(
            epath.Path(workdir) / CONFIG_FILE, config.to_json_best_effort(indent=2)
        )
    if jax.process_index() == 0 and not restored:
        # Checkpoint sweeps (python -m rlvr_jax.evaluate) decode with this.
        _save_tokenizer(tokenizer, epath.Path(workdir) / "tokenizer")
    writer = metrics_lib.MetricsWriter(
        workdir,
        resume_step=start if restored else None,
        tensorboard=config.log.tensorboard,
        wandb_project=config.log.wandb_project,
        run_config=config.to_dict(),
    )
    progress = metrics_lib.Progress(config.train.steps, start)
    pool = reward_lib.RewardPool(
        workers=config.log.checker_workers or None,
        timeout_s=config.log.checker_timeout_s,
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
        checkpointer.save(step, state.params, train_items, meta)
        _write_history(workdir, history)
        if (
            config.checkpoint.export_hf_every
            and step % config.checkpoint.export_hf_every == 0
        ):
            export(step)

    def export(step: int) -> None:
        params = state.params
        if jax.process_count() > 1:
            # fsdp shards live on every host: all processes gather the whole
            # tree (a collective, host memory of one fp32 copy), one writes.
            params = sharding_lib.to_host(params)
        if jax.process_index() != 0:
            return
        out = epath.Path(workdir) / "hf" / f"step_{step}"
        with _local_dir(out) as local:
            params_lib.save_hf(local, model_config, params)
            tokenizer.save_pretrained(local)

    def run_eval() -> dict[str, float]:
        return evaluate(
            model_config,
            state.params,
            sets,
            eval_settings,
            tokenizer,
            pool,
            buckets=config.data.prompt_buckets,
            slots=config.eval.chunk_size,
            mesh=mesh,
            decode_sharding=decode_sharding,
        )

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
            roll = sampler_lib.rollout(
                model_config,
                state.params,
                [prompt_ids[ex.index] for ex in batch_examples],
                settings,
                jax.random.fold_in(base_key, step),
                buckets=config.data.prompt_buckets,
                slots=config.rollout.chunk_size,
                mesh=mesh,
                decode_sharding=decode_sharding,
            )
            t_sample = time.time() - t0
            # --------------------------------------------------------- score
            t0 = time.time()
            texts = tokenizer_lib.decode_responses(tokenizer, roll)
            golds = [
                ex.ground_truth for ex in batch_examples for _ in range(settings.n)
            ]
            scored = pool.score(texts, golds)
            rewards = np.asarray(scored.rewards, np.float32)
            t_score = time.time() - t0
            # ---------------------------------------------------- advantages
            adv = np.asarray(
                grpo.advantages(
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
                limit=_learner_width(config),
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
            applied = sharding_lib.local_value(state.step) - sharding_lib.local_value(
                state.skipped
            )
            lr = float(lr_schedule(applied))
            state, learn = train_step(state, batch)
            learn = jax.tree.map(sharding_lib.local_value, learn)
            t_learn = time.time() - t0
            step += 1
            # ----------------------------------------------------------- log
            generated = int(roll.lengths.sum())
            m = _rollout_metrics(roll, rewards, batch_examples, settings.n, history)
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
                    "checker/timeouts": scored.timeouts,
                    "checker/errors": scored.errors,
                    "time/sample_s": t_sample,
                    "time/score_s": t_score,
                    "time/learn_s": t_learn,
                    "learner/token_efficiency": packing.token_efficiency(host_batch),
                    "throughput/gen_tokens_per_s": generated / max(t_sample, 1e-9),
                    "rollout/slot_efficiency": roll.slot_efficiency,
                }
            )
            # ------------------------------------------------ eval and save
            if config.eval.every and step % config.eval.every == 0:
                m.update(run_eval())
            m["time/step_s"] = time.time() - t_step
            writer.write(step, m)
            progress.update(step, m)
            last = m
            if step % config.checkpoint.every == 0 or step == config.train.steps:
                save(step)
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


@contextlib.contextmanager
def _local_dir(out: epath.Path):
    """A local directory whose files end up in `out` (local or gs://).

    safetensors and tokenizers only write local files: for a remote `out`
    they are staged in a temporary directory and copied.
    """
    if not io_lib.is_remote(out):
        out.mkdir(parents=True, exist_ok=True)
        yield str(out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield tmp
        out.mkdir(parents=True, exist_ok=True)
        for name in os.listdir(tmp):
            epath.Path(tmp, name).copy(out / name, overwrite=True)


def _save_tokenizer(tokenizer, out: epath.Path) -> None:
    with _local_dir(out) as local:
        tokenizer.save_pretrained(local)
