"""Benchmark evaluation: the paper's table for a model or every checkpoint.

    python -m rlvr_jax.evaluate --config=configs/eval.py --workdir=DIR \
        --config.model.path=MODEL [--coordinator_address=HOST:PORT \
        --num_processes=N --process_id=I]

The benchmark files are the packaged ones (`rlvr_jax.data.paper_data`) unless
`data.dir` names a directory of `<benchmark>/test.jsonl` files.

What is evaluated (`model.path`, "" = --workdir; `checkpoint.find_models`): a
Hugging Face directory; a directory of per-step HF exports (a sweep); a
training workdir, its `checkpoints/` folder or one step folder (orbax; a sweep
over `model.steps`: "all", "latest" or "0,20,40").

Protocol: the registry's per benchmark (`rlvr_jax.data.suites`, docs/recipe.md),
or the config's, per benchmark too (`sampling.n_by_benchmark`,
`sampling.temperature_by_benchmark`); avg@k and pass@k for each;
`rlvr_jax.data.tasks` loads and checks every benchmark before a model is read.
Scoring: lenient extraction by default; `score.mode=boxed` reads the last box
only, and `score.think` applies the think rule of reasoning models (only the
text after `</think>` is graded; `checker.after_thinking`), as
configs/r1_distill_eval.py does. Generation is training's sampler
(`sampler.rollout`) over every device of every process, weights replicated; a
group's sampling key derives from (seed, benchmark, its first row), so tokens
do not depend on the number of devices or processes.

Several processes (a TPU pod, a GPU cluster) run the same command with the
process flags of `rlvr_jax.distributed`; every process reads the model and
the benchmarks. Process 0 alone reads and writes the workdir and scores: it
decides what is left to do and the others follow it (so a workdir on process
0's local disk works too); the others only sample.

Output, per model, in `<workdir>/eval/<tag>/` (tag `step_<n>` or the model
directory's name): results.{json,md,csv} and `generations/<benchmark>.jsonl`
(prompt, response, extracted answer, gold, correct, length, finish reason and
the problem's categories, e.g. MATH500's subject and level, per sample).
Besides accuracy, each benchmark reports `format_rate` (responses with a
well-formed final box) and, where its problems have categories, accuracy per
category (`rlvr_jax.evaluation.results`). A sweep also writes
`<workdir>/eval/summary.{json,md,csv}`; `python -m rlvr_jax.evaluation.show`
prints one problem's responses.

Resumption: each benchmark's generations are written atomically when it
finishes and reused when the settings match; a model whose results.json
matches the settings is skipped. A crashed sweep therefore resumes where it
stopped.
"""

from __future__ import annotations

import itertools
import json
import os
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from rlvr_jax import build, checkpoint, distributed
from rlvr_jax import io as io_lib
from rlvr_jax import metrics as metrics_lib
from rlvr_jax import reward as reward_lib
from rlvr_jax import sharding as sharding_lib
from rlvr_jax.checkpoint import ModelSource
from rlvr_jax.data import suites
from rlvr_jax.data import tasks as tasks_lib
from rlvr_jax.data import tokenizer as tokenizer_lib
from rlvr_jax.data.tasks import EvalError  # re-exported
from rlvr_jax.evaluation import results as results_lib
from rlvr_jax.model import decoder
from rlvr_jax.reward import checker
from rlvr_jax.rollout import engine, sampling


# ==================================================================== model
class Model(NamedTuple):
    """A model ready for sampling: architecture, params, tokenizer, stop ids."""

    config: decoder.ModelConfig
    params: Any
    tokenizer: Any
    eos_ids: tuple[int, ...]


def load_model(config, source: ModelSource, mesh) -> Model:
    """The source's weights replicated over `mesh`, with its tokenizer."""
    try:
        model_config, params = checkpoint.load_model(
            source,
            config.model.param_dtype,
            config.model.dtype,
            sharding_lib.replicated(mesh),
        )
        tok = checkpoint.load_tokenizer(source, config.tokenizer)
    except FileNotFoundError as e:
        raise EvalError(str(e)) from None
    if len(tok) > model_config.vocab_size:
        raise EvalError(
            f"tokenizer has {len(tok)} tokens, more than the model's vocab_size "
            f"{model_config.vocab_size}: wrong --config.tokenizer?"
        )
    eos = tokenizer_lib.merged_eos_ids(model_config.eos_token_ids, tok)
    return Model(model_config, params, tok, eos)


# =============================================================== generation
def _seed(seed: int, name: str, first_row: int) -> int:
    """A sampling seed per (run seed, benchmark, group): distinct, reproducible."""
    entropy = [seed, zlib.crc32(name.encode()), first_row]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def sample_records(config, model: Model, task: tasks_lib.Task, mesh) -> list[dict]:
    """Samples `task.protocol.n` responses per problem; unscored records.

    Prompts are sorted by length and grouped by padded width (the smallest of
    `sampling.prompt_buckets` that fits; empty: the next power of two); each
    group is sampled by `engine.rollout` over `mesh` in calls of
    `build.benchmark_call_prompts` prompts (`sampling.chunk_rows` responses),
    every call of a width the same program. Every process gets every record.

    Raises:
      EvalError: a prompt too long for the context, naming the problem.
    """
    problems, protocol = task.problems, task.protocol
    texts = [
        tasks_lib.render(model.tokenizer, config.template, p.problem) for p in problems
    ]
    ids = model.tokenizer(texts, add_special_tokens=False)["input_ids"]
    limit = model.config.max_seq_len - protocol.max_new_tokens
    for p, row in zip(problems, ids):
        if len(row) > limit:
            raise EvalError(
                f"{p.benchmark} problem {p.index}: prompt has {len(row)} tokens; "
                f"max_seq_len {model.config.max_seq_len} minus max_new_tokens "
                f"{protocol.max_new_tokens} leaves {limit}"
            )
    settings = build.benchmark_sampling_settings(
        config, protocol, model.eos_ids, model.tokenizer.pad_token_id or 0
    )
    settings.check_against(model.config)
    n, buckets = protocol.n, tuple(config.sampling.prompt_buckets) or None
    order = sorted(range(len(problems)), key=lambda i: len(ids[i]))
    width = lambda i: sampling.bucket_width(len(ids[i]), buckets)  # noqa: E731
    records: list[dict | None] = [None] * (len(problems) * n)
    per_call = build.benchmark_call_prompts(config, protocol, len(problems))
    first = 0
    for w, group in itertools.groupby(order, key=width):
        chosen = list(group)
        key = jax.random.key(_seed(config.seed, task.benchmark.name, first))
        first += len(chosen)
        # Calls of `per_call` prompts, each sized as a full one: one program
        # per (protocol, width); the tokens are those of one call.
        roll = engine.rollout_in_calls(
            model.config,
            model.params,
            [ids[i] for i in chosen],
            settings,
            key,
            per_call=per_call,
            buckets=(w,),
            slots=config.sampling.chunk_rows,
            mesh=mesh,
            decode_sharding=sharding_lib.replicated(mesh),
        )
        responses = tokenizer_lib.decode_responses(model.tokenizer, roll)
        for row, response in enumerate(responses):
            i, sample = chosen[row // n], row % n
            p = problems[i]
            records[i * n + sample] = {
                "benchmark": p.benchmark,
                "index": p.index,
                "group": p.group,
                "sample": sample,
                "prompt": texts[i],
                "response": response,
                "gold": p.gold,
                "length": int(roll.lengths[row]),
                "finish_reason": "length" if roll.truncated[row] else "stop",
                **p.categories(),
            }
    assert all(r is not None for r in records), "a sample was not generated"
    return records


def add_categories(records: list[dict], problems: Sequence[suites.Problem]) -> None:
    """Sets each record's category fields from its problem (in place).

    Generations saved before records carried categories are reused as they
    are (same settings, same file, so `index` still names the problem); this
    gives them the categories the results break down by.
    """
    by_index = {p.index: p for p in problems}
    for r in records:
        for field, value in by_index[r["index"]].categories().items():
            r.setdefault(field, value)


def score(pool: reward_lib.RewardPool, records: list[dict]) -> tuple[int, int]:
    """Adds `extracted` and `correct` to each record (in place).

    `pool` is the run's `RewardPool` (by default in "eval" mode, lenient
    extraction: last \\boxed{}, else "the answer is", else the last number;
    `score.mode` and `score.think` set its mode and think rule); a comparison
    past its deadline counts as wrong. Returns (timeouts, errors).
    """
    if not records:
        return 0, 0
    result = pool.score([r["response"] for r in records], [r["gold"] for r in records])
    for r, value, answer in zip(records, result.rewards, result.extracted):
        r["extracted"] = answer
        r["correct"] = value > 0
    return result.timeouts, result.errors


# ============================================================= the program
def evaluate_source(
    config,
    source: ModelSource,
    tasks: Sequence[tasks_lib.Task],
    workdir: str,
    pool: reward_lib.RewardPool | None,
    mesh,
    log: Callable[[str], None] = print,
) -> dict | None:
    """Evaluates one model on `tasks`; writes and returns its results.

    Generations of a benchmark are reused when their settings match (resume);
    the model is only loaded when something must be generated. Processes
    other than 0 only sample (`pool` None) and return None.
    """
    lead = jax.process_index() == 0
    out_dir = os.path.join(workdir, "eval", source.tag)
    gen_dir = os.path.join(out_dir, "generations")
    words = tuple(
        w.strip() for w in config.analysis.reflection_words.split(",") if w.strip()
    )
    settings = [task.settings(config, source.describe()) for task in tasks]
    reuse = sharding_lib.from_process_0(
        [
            not config.overwrite
            and results_lib.read_json(
                os.path.join(gen_dir, f"{s['benchmark']}.settings.json")
            )
            == s
            and os.path.exists(os.path.join(gen_dir, f"{s['benchmark']}.jsonl"))
            for s in settings
        ]
    )
    model: Model | None = None
    per_benchmark: dict[str, dict] = {}
    for task, task_settings, saved in zip(tasks, settings, reuse):
        name, protocol = task.benchmark.name, task.protocol
        gen_path = os.path.join(gen_dir, f"{name}.jsonl")
        if saved:
            if not lead:
                continue
            records = io_lib.read_jsonl(gen_path)
            add_categories(records, task.problems)
            log(f"[{source.tag}] {name}: reusing {len(records)} saved generations")
        else:
            if model is None:
                log(f"[{source.tag}] loading {source.kind} model {source.path}")
                model = load_model(config, source, mesh)
            t0 = time.time()
            records = sample_records(config, model, task, mesh)
            if not lead:
                continue
            timeouts, errors = score(pool, records)
            if timeouts or errors:
                log(
                    f"[{source.tag}] {name}: checker timeouts {timeouts}, "
                    f"errors {errors} (scored wrong)"
                )
            # Generations first, settings second: settings mark them complete.
            io_lib.write_jsonl(gen_path, records)
            io_lib.write_atomic(
                os.path.join(gen_dir, f"{name}.settings.json"),
                json.dumps(task_settings, indent=2) + "\n",
            )
            log(
                f"[{source.tag}] {name}: {len(records)} generations in "
                f"{time.time() - t0:.1f}s"
            )
        metrics = results_lib.benchmark_metrics(records, words, config.score.think)
        metrics["protocol"] = protocol.label
        metrics["title"] = task.benchmark.title
        closed = ""
        if config.score.think:
            # How often the model finished thinking within max_new_tokens:
            # the rest scored 0 whatever they wrote.
            metrics["think_closed"] = float(
                np.mean(
                    [checker.after_thinking(r["response"]) is not None for r in records]
                )
            )
            closed = f"  thinking closed {100 * metrics['think_closed']:.1f}%"
        per_benchmark[name] = metrics
        k = metrics["k"]
        log(
            f"[{source.tag}] {name} ({protocol.label}): "
            f"avg@{k} {100 * metrics['avg@k']:.2f}  pass@{k} {100 * metrics['pass@k']:.2f}"
            f"  format {100 * metrics['format_rate']:.1f}%" + closed
        )
    if not lead:
        return None
    results = {
        "model": source.describe(),
        "settings": _run_settings(config),
        "benchmarks": per_benchmark,
        "average": results_lib.average(per_benchmark),
    }
    results_lib.write_results(out_dir, results)
    log(
        f"[{source.tag}] average over {len(per_benchmark)}: "
        f"{100 * results['average']:.2f}  -> {out_dir}"
    )
    return results


def _run_settings(config) -> dict:
    """What must match for a model's saved results to count as done.

    Round-tripped through JSON (tuples become lists) so that it compares equal
    to what results.json holds.
    """
    settings = {
        "benchmarks": config.benchmarks,
        "template": config.template,
        "seed": config.seed,
        "sampling": config.sampling.to_dict(),
        "limit": config.data.limit,
        "data": {"dir": config.data.dir, "format": config.data.format},
        **tasks_lib.score_settings(config),
    }
    return json.loads(json.dumps(settings))


def run(config, workdir: str, log: Callable[[str], None] = print) -> list[dict]:
    """Evaluates every model `config.model` designates; returns their results.

    All benchmark data is loaded and checked first, so a bad file fails before
    any model loads. Finished models are skipped (their results are read
    back): rerunning a crashed sweep only does what is left. Writes the sweep
    summary. Multi-process: every process calls this; process 0 logs, writes
    and returns the results, the others return an empty list.
    """
    tasks = tasks_lib.load_tasks(config)
    try:
        sources = checkpoint.find_models(
            config.model.path or workdir, config.model.steps, config.model.step
        )
    except (FileNotFoundError, ValueError) as e:
        raise EvalError(str(e)) from None
    lead = jax.process_index() == 0
    run_settings = _run_settings(config)
    saved = [
        results_lib.finished(
            os.path.join(workdir, "eval", s.tag), s.describe(), run_settings
        )
        if lead and not config.overwrite
        else None
        for s in sources
    ]
    done = sharding_lib.from_process_0([r is not None for r in saved])
    if not lead:
        log = lambda _: None  # noqa: E731
    else:
        os.makedirs(workdir, exist_ok=True)
    mesh = sharding_lib.make_mesh()  # every device of every process on `data`
    out = []
    pool = None
    try:
        for source, results, is_done in zip(sources, saved, done):
            if is_done:
                log(f"[{source.tag}] done already, skipping")
                out.append(results)
                continue
            if pool is None and lead:
                pool = reward_lib.RewardPool(
                    workers=config.score.workers or None,
                    timeout_s=config.score.timeout_s,
                    mode=config.score.mode,
                    think=config.score.think,
                )
            out.append(evaluate_source(config, source, tasks, workdir, pool, mesh, log))
            if lead:  # keep the summary current during a sweep
                results_lib.write_summary(workdir)
    finally:
        if pool is not None:
            pool.close()
    if not lead:
        return []
    results_lib.write_summary(workdir)
    return out


# ===================================================================== CLI
def cli(config, workdir: str) -> None:
    """`run`, with a bad input ending the program on one `error: ...` line
    (no traceback): what the command line does after its flags."""
    try:
        run(config, workdir)
    except (EvalError, suites.BenchmarkError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None


def main(argv: Sequence[str]) -> None:
    from absl import flags

    del argv
    metrics_lib.quiet_library_logs()
    distributed.setup()  # before any device is touched
    cli(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", None, "eval config file", lock_config=True
    )
    flags.DEFINE_string(
        "workdir", None, "output directory (and training workdir for sweeps)"
    )
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
