"""Benchmark evaluation: the paper's table for a model or every checkpoint.

    python -m rlvr_jax.evaluate --config=configs/eval.py --workdir=DIR \
        --config.model.path=MODEL

The benchmark files are the packaged ones (`rlvr_jax.paper_data`) unless
`data.dir` names a directory of `<benchmark>/test.jsonl` files.

What is evaluated (`model.path`):
  - a Hugging Face directory (has config.json): that model;
  - a directory of per-step HF exports (`<step>/` or `step_<step>/`
    subdirectories, e.g. a training run's `hf/`): a sweep over them;
  - empty (the training workdir given by --workdir), a training workdir, its
    `checkpoints/` folder or one step folder: orbax checkpoints, a sweep over
    `model.steps` ("all", "latest" or "0,20,40").

Protocol (docs/recipe.md): MATH500, Minerva and OlympiadBench greedy × 1; AIME24,
AIME25 and AMC23 at T=0.6 × 8, averaged (avg@8); 3072 new tokens; the
"qwen25-math-cot" template; lenient eval-mode answer extraction. Every
benchmark reports avg@k (mean accuracy over its k samples per problem, the
headline number) and pass@k (a problem counts when any sample is right).

Output, per model, in `<workdir>/eval/<tag>/` (tag `step_<n>` or the model
directory's name): results.{json,md,csv} and `generations/<benchmark>.jsonl`
(prompt, response, extracted answer, gold, correct, length, finish reason per
sample). A sweep also writes `<workdir>/eval/summary.{json,md,csv}`.

Resumption: each benchmark's generations are written atomically when it
finishes and reused when the settings match; a model whose results.json
matches the settings is skipped. A crashed sweep therefore resumes where it
stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from rlvr_jax import benchmarks, paper_data
from rlvr_jax import metrics as metrics_lib
from rlvr_jax import results as results_lib
from rlvr_jax.results import EvalError  # noqa: F401 - re-exported

# Prompt templates. "qwen25-math-cot" is the paper's eval template: the chat
# template with the bare problem as the only user turn. Any other string that
# contains "{problem}" is used as raw prompt text (no chat template).
TEMPLATES = ("qwen25-math-cot", "qwen25-math-cot-step")


# ============================================================ model sources
@dataclasses.dataclass(frozen=True)
class ModelSource:
    """One model to evaluate.

    Attributes:
      kind: "hf" (a Hugging Face directory) or "orbax" (a training checkpoint).
      path: the HF directory, or the orbax checkpoints location.
      step: the training step, or None when unknown.
    """

    kind: str
    path: str
    step: int | None

    @property
    def tag(self) -> str:
        """The output directory name: `step_<n>`, else the model dir's name."""
        if self.step is not None:
            return f"step_{self.step}"
        return os.path.basename(os.path.normpath(self.path)) or "model"

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "path": os.path.abspath(self.path),
            "step": self.step,
            "tag": self.tag,
        }


_STEP_DIR = re.compile(r"^(?:step_)?(\d+)$")


def _is_hf_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def _hf_step_dirs(path: str) -> dict[int, str]:
    """{step: dir} of `<step>/` or `step_<step>/` HF subdirectories."""
    out = {}
    for name in os.listdir(path):
        m = _STEP_DIR.match(name)
        full = os.path.join(path, name)
        if m and _is_hf_dir(full):
            out[int(m.group(1))] = full
    return out


def _select_steps(available: Sequence[int], spec: str, where: str) -> list[int]:
    available = sorted(available)
    if not available:
        raise results_lib.EvalError(f"no checkpoints found in {where}")
    spec = spec.strip()
    if spec == "all":
        return available
    if spec == "latest":
        return available[-1:]
    try:
        wanted = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise results_lib.EvalError(
            f"model.steps={spec!r}: want 'all', 'latest' or a comma list of steps"
        ) from None
    missing = [s for s in wanted if s not in available]
    if missing:
        raise results_lib.EvalError(
            f"checkpoint step(s) {missing} do not exist in {where}; "
            f"available steps: {available}"
        )
    return wanted


def resolve_sources(
    path: str, steps: str, step_label: int, workdir: str
) -> list[ModelSource]:
    """The models that `model.path` / `model.steps` designate (see module doc).

    Args:
      path: `model.path` ("" = the training workdir).
      steps: `model.steps` for sweeps: "all", "latest" or "0,20".
      step_label: `model.step`, a step to label a single HF model with
        (-1: none).
      workdir: --workdir.

    Raises:
      results_lib.EvalError: a missing path, no checkpoints, or a step that does not exist.
    """
    location = path or workdir
    if not os.path.isdir(location):
        raise results_lib.EvalError(f"model path not found: {location}")
    if _is_hf_dir(location):
        return [ModelSource("hf", location, None if step_label < 0 else step_label)]
    hf_steps = _hf_step_dirs(location)
    if hf_steps:
        chosen = _select_steps(list(hf_steps), steps, location)
        return [ModelSource("hf", hf_steps[s], s) for s in chosen]
    from rlvr_jax import checkpoint  # lazy: orbax is only needed for sweeps

    base = os.path.basename(os.path.normpath(location))
    is_workdir = os.path.isdir(os.path.join(location, "checkpoints"))
    if base.isdigit() and not is_workdir:  # one orbax step folder
        return [
            ModelSource("orbax", os.path.dirname(os.path.normpath(location)), int(base))
        ]
    available = checkpoint.available_steps(location)
    chosen = _select_steps(available, steps, location)
    return [ModelSource("orbax", location, s) for s in chosen]


def load_model(source: ModelSource, dtype: str, param_dtype: str):
    """(ModelConfig, params) of a source, params in `param_dtype`."""
    import jax
    import jax.numpy as jnp

    if source.kind == "hf":
        from rlvr_jax import params as params_lib

        return params_lib.load_hf(
            source.path, jnp.dtype(param_dtype), compute_dtype=dtype
        )
    from rlvr_jax import checkpoint

    try:
        config, params = checkpoint.load_params(source.path, source.step)
    except FileNotFoundError as e:
        raise results_lib.EvalError(str(e)) from None
    params = jax.tree.map(lambda x: x.astype(param_dtype), params)
    return config.replace(dtype=dtype, param_dtype=param_dtype, remat=False), params


def load_tokenizer(spec: str, source: ModelSource):
    """The tokenizer: `spec` ("tiny" or a HF dir), else the model's own.

    For orbax checkpoints without `spec`, the training workdir's `tokenizer/`
    folder is used when the run saved one there.
    """
    from rlvr_jax import tokenizer as tokenizer_lib

    if spec == "tiny":
        return tokenizer_lib.build_tiny()
    if spec:
        return tokenizer_lib.load(spec)
    if source.kind == "hf":
        return tokenizer_lib.load(source.path)
    run_dir = os.path.normpath(source.path)
    if os.path.basename(run_dir) == "checkpoints":
        run_dir = os.path.dirname(run_dir)
    saved = os.path.join(run_dir, "tokenizer")
    if os.path.isdir(saved):
        return tokenizer_lib.load(saved)
    raise results_lib.EvalError(
        f"orbax checkpoint {source.path} step {source.step} carries no tokenizer: "
        "set --config.tokenizer to the base model's directory (or 'tiny')"
    )


# ================================================================ prompting
def render(tokenizer, template: str, problem: str) -> str:
    """The prompt text of `problem` under `template` (see TEMPLATES)."""
    from rlvr_jax import data

    if template == "qwen25-math-cot":
        return data.render_prompt(tokenizer, [{"role": "user", "content": problem}])
    if template == "qwen25-math-cot-step":  # the training prompt's suffix
        content = problem + data.STEP_BY_STEP_SUFFIX
        return data.render_prompt(tokenizer, [{"role": "user", "content": content}])
    if "{problem}" in template:
        return template.replace("{problem}", problem)
    raise results_lib.EvalError(
        f"template {template!r}: want one of {TEMPLATES} or a string with {{problem}}"
    )


# =============================================================== generation
@dataclasses.dataclass(frozen=True)
class Protocol:
    """How one benchmark is sampled (resolved from config and registry)."""

    temperature: float
    n: int
    max_new_tokens: int
    top_p: float
    top_k: int

    @property
    def label(self) -> str:
        return benchmarks.describe_protocol(self.temperature, self.n)


def _seed(seed: int, name: str, chunk: int) -> int:
    """A sampling seed per (run seed, benchmark, chunk): distinct, reproducible."""
    entropy = [seed, zlib.crc32(name.encode()), chunk]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def generate(
    model_config,
    params,
    tokenizer,
    problems: Sequence[benchmarks.Problem],
    protocol: Protocol,
    *,
    template: str,
    seed: int,
    chunk_rows: int,
    cache_dtype: str,
    eos_ids: Sequence[int],
    buckets: Sequence[int] = (),
) -> list[dict]:
    """Samples `protocol.n` responses per problem; unscored records.

    Prompts are sorted by length and sampled in chunks of `chunk_rows`
    responses, so each chunk is padded only to its own longest prompt,
    rounded up to one of `buckets` (empty: the next power of two); each
    distinct width compiles the sampler once.

    Raises:
      results_lib.EvalError: a prompt too long for the context, naming the problem.
    """
    from rlvr_jax import sampler

    texts = [render(tokenizer, template, p.problem) for p in problems]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    limit = model_config.max_seq_len - protocol.max_new_tokens
    for p, row in zip(problems, ids):
        if len(row) > limit:
            raise results_lib.EvalError(
                f"{p.benchmark} problem {p.index}: prompt has {len(row)} tokens; "
                f"max_seq_len {model_config.max_seq_len} minus max_new_tokens "
                f"{protocol.max_new_tokens} leaves {limit}"
            )
    order = sorted(range(len(problems)), key=lambda i: len(ids[i]))
    # Fewer problems than a chunk: a smaller batch, not dummy padding rows.
    per_chunk = min(max(1, chunk_rows // protocol.n), len(problems))
    records: list[dict | None] = [None] * (len(problems) * protocol.n)
    name = problems[0].benchmark
    pad_id = tokenizer.pad_token_id or 0
    for c, start in enumerate(range(0, len(order), per_chunk)):
        chosen = order[start : start + per_chunk]
        roll = sampler.generate(
            model_config,
            params,
            [ids[i] for i in chosen],
            max_new_tokens=protocol.max_new_tokens,
            temperature=protocol.temperature,
            top_p=protocol.top_p,
            top_k=protocol.top_k,
            eos_ids=tuple(eos_ids),
            seed=_seed(seed, name, c),
            n=protocol.n,
            chunk_size=per_chunk,
            cache_dtype=cache_dtype,
            pad_id=pad_id,
            buckets=tuple(buckets) or None,
        )
        responses = tokenizer.batch_decode(
            [t[:n] for t, n in zip(roll.tokens, roll.lengths)], skip_special_tokens=True
        )
        for row, (pi, resp) in enumerate(zip(roll.prompt_index, responses)):
            i = chosen[int(pi)]
            sample = row % protocol.n
            p = problems[i]
            records[i * protocol.n + sample] = {
                "benchmark": p.benchmark,
                "index": p.index,
                "group": p.group,
                "sample": sample,
                "prompt": texts[i],
                "response": resp,
                "gold": p.gold,
                "length": int(roll.lengths[row]),
                "finish_reason": roll.finish_reason[row],
            }
    assert all(r is not None for r in records), "a sample was not generated"
    return records


# ================================================================== scoring
class Scorer:
    """Eval-mode answer checking in a killable process pool (`rlvr_jax.reward`).

    Extraction is the lenient eval mode (last \\boxed{}, else "the answer
    is", else the last number; numbers equal within relative 1e-4); a
    comparison past `timeout_s` counts as wrong.
    """

    def __init__(self, workers: int | None, timeout_s: float):
        from rlvr_jax import reward

        self._pool = reward.RewardPool(
            workers=workers, timeout_s=timeout_s, mode="eval"
        )
        self.timeouts = 0
        self.errors = 0

    def score(self, records: list[dict]) -> list[dict]:
        """Adds `extracted` and `correct` to each record (in place)."""
        if not records:
            return records
        result = self._pool.score(
            [r["response"] for r in records], [r["gold"] for r in records]
        )
        for r, value, answer in zip(records, result.rewards, result.extracted):
            r["extracted"] = answer
            r["correct"] = value > 0
        self.timeouts += result.timeouts
        self.errors += result.errors
        return records

    def close(self) -> None:
        self._pool.close()


# ============================================================= the program
def _load_problems(
    config, name: str, path: str | None
) -> tuple[list[benchmarks.Problem], str]:
    """A benchmark's problems (first `data.limit` of them) and their source.

    An explicit `name=path` is read as jsonl whatever `data.format` says; the
    format decides how `data.dir` is read.
    """
    d = config.data
    if d.format not in ("jsonl", "tfds"):
        raise results_lib.EvalError(f"data.format={d.format!r}: want 'jsonl' or 'tfds'")
    if path:
        problems, source = benchmarks.load_jsonl(name, path), os.path.abspath(path)
    elif d.format == "tfds":
        problems = benchmarks.load_tfds(name, d.tfds_dir or None, d.dir or None)
        source = f"tfds:{name}"
    else:
        data_dir = os.path.abspath(d.dir) if d.dir else paper_data.eval_dir()
        problems, source = benchmarks.load_jsonl(name, data_dir), data_dir
    if d.limit:
        # Whole groups, so a replicated file keeps all samples of a problem.
        keep = set(sorted({p.group for p in problems})[: d.limit])
        problems = [p for p in problems if p.group in keep]
    return problems, source


def _protocol(config, benchmark: benchmarks.Benchmark) -> Protocol:
    s = config.sampling
    return Protocol(
        temperature=benchmark.temperature if s.temperature < 0 else s.temperature,
        n=benchmark.n_samples if s.n <= 0 else s.n,
        max_new_tokens=s.max_new_tokens,
        top_p=s.top_p,
        top_k=s.top_k,
    )


@dataclasses.dataclass(frozen=True)
class Task:
    """One benchmark ready to run: its problems, protocol and data source."""

    benchmark: benchmarks.Benchmark
    problems: tuple[benchmarks.Problem, ...]
    protocol: Protocol
    data_source: str


def load_tasks(config) -> list[Task]:
    """Every configured benchmark, loaded and checked before any model is.

    Raises:
      BenchmarkError, results_lib.EvalError: an unknown name, missing file, bad row or
        template, naming which.
    """
    if config.template not in TEMPLATES and "{problem}" not in config.template:
        raise results_lib.EvalError(
            f"template {config.template!r}: want one of {TEMPLATES} or a string "
            "with {problem}"
        )
    tasks = []
    for name, path in benchmarks.parse_spec(config.benchmarks):
        bench = benchmarks.get(name)
        problems, data_source = _load_problems(config, name, path)
        tasks.append(
            Task(bench, tuple(problems), _protocol(config, bench), data_source)
        )
    return tasks


def evaluate_source(
    config,
    source: ModelSource,
    tasks: Sequence[Task],
    workdir: str,
    scorer: Scorer,
    log: Callable[[str], None] = print,
) -> dict:
    """Evaluates one model on `tasks`; writes and returns its results.

    Generations of a benchmark are reused when their settings match (resume);
    the model is only loaded when something must be generated.
    """
    out_dir = os.path.join(workdir, "eval", source.tag)
    words = tuple(
        w.strip() for w in config.analysis.reflection_words.split(",") if w.strip()
    )
    model: tuple | None = None
    per_benchmark: dict[str, dict] = {}
    for task in tasks:
        name, protocol = task.benchmark.name, task.protocol
        settings = {
            "model": source.describe(),
            "benchmark": name,
            "data": task.data_source,
            "n_problems": len({p.group for p in task.problems}),
            "template": config.template,
            "seed": config.seed,
            **dataclasses.asdict(protocol),
        }
        gen_path = os.path.join(out_dir, "generations", f"{name}.jsonl")
        settings_path = os.path.join(out_dir, "generations", f"{name}.settings.json")
        if (
            not config.overwrite
            and results_lib.read_json(settings_path) == settings
            and os.path.exists(gen_path)
        ):
            records = results_lib.read_jsonl(gen_path)
            log(f"[{source.tag}] {name}: reusing {len(records)} saved generations")
        else:
            if model is None:
                log(f"[{source.tag}] loading {source.kind} model {source.path}")
                model = _prepare_model(config, source)
            t0 = time.time()
            model_config, params, tok, eos_ids = model
            records = generate(
                model_config,
                params,
                tok,
                task.problems,
                protocol,
                template=config.template,
                seed=config.seed,
                chunk_rows=config.sampling.chunk_rows,
                cache_dtype=config.sampling.cache_dtype,
                eos_ids=eos_ids,
                buckets=config.sampling.prompt_buckets,
            )
            before = (scorer.timeouts, scorer.errors)
            scorer.score(records)
            if (scorer.timeouts, scorer.errors) != before:
                log(
                    f"[{source.tag}] {name}: checker timeouts "
                    f"{scorer.timeouts - before[0]}, errors {scorer.errors - before[1]}"
                    " (scored wrong)"
                )
            # Generations first, settings second: settings mark them complete.
            results_lib.write_jsonl(gen_path, records)
            metrics_lib.write_atomic(
                settings_path, json.dumps(settings, indent=2) + "\n"
            )
            log(
                f"[{source.tag}] {name}: {len(records)} generations in "
                f"{time.time() - t0:.1f}s"
            )
        metrics = results_lib.benchmark_metrics(records, words)
        metrics["protocol"] = protocol.label
        metrics["title"] = task.benchmark.title
        per_benchmark[name] = metrics
        k = metrics["k"]
        log(
            f"[{source.tag}] {name} ({protocol.label}): "
            f"avg@{k} {100 * metrics['avg@k']:.2f}  pass@{k} {100 * metrics['pass@k']:.2f}"
        )
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
    }
    return json.loads(json.dumps(settings))


def _prepare_model(config, source: ModelSource):
    """(ModelConfig, params, tokenizer, eos ids) ready for sampling."""
    from rlvr_jax import tokenizer as tokenizer_lib

    model_config, params = load_model(
        source, config.model.dtype, config.model.param_dtype
    )
    tok = load_tokenizer(config.tokenizer, source)
    if len(tok) > model_config.vocab_size:
        raise results_lib.EvalError(
            f"tokenizer has {len(tok)} tokens, more than the model's vocab_size "
            f"{model_config.vocab_size}: wrong --config.tokenizer?"
        )
    eos = tuple(
        dict.fromkeys(model_config.eos_token_ids + tokenizer_lib.stop_token_ids(tok))
    )
    return model_config, params, tok, eos


def _is_done(config, source: ModelSource, workdir: str) -> bool:
    if config.overwrite:
        return False
    r = results_lib.read_json(
        os.path.join(workdir, "eval", source.tag, results_lib.RESULTS_FILE)
    )
    return (
        isinstance(r, dict)
        and r.get("model") == source.describe()
        and r.get("settings") == _run_settings(config)
    )


def run(config, workdir: str, log: Callable[[str], None] = print) -> list[dict]:
    """Evaluates every model `config.model` designates; returns their results.

    All benchmark data is loaded and checked first, so a bad file fails before
    any model loads. Finished models are skipped (their results are read
    back): rerunning a crashed sweep only does what is left. Writes the sweep
    summary.
    """
    tasks = load_tasks(config)
    sources = resolve_sources(
        config.model.path, config.model.steps, config.model.step, workdir
    )
    os.makedirs(workdir, exist_ok=True)
    out = []
    scorer: Scorer | None = None
    try:
        for source in sources:
            if _is_done(config, source, workdir):
                log(f"[{source.tag}] done already, skipping")
                out.append(
                    results_lib.read_json(
                        os.path.join(
                            workdir, "eval", source.tag, results_lib.RESULTS_FILE
                        )
                    )
                )
                continue
            if scorer is None:
                scorer = Scorer(config.score.workers or None, config.score.timeout_s)
            out.append(evaluate_source(config, source, tasks, workdir, scorer, log))
            results_lib.write_summary(
                workdir
            )  # keep the summary current during a sweep
    finally:
        if scorer is not None:
            scorer.close()
    results_lib.write_summary(workdir)
    return out


# ===================================================================== CLI
def main(argv: Sequence[str]) -> None:
    from absl import flags

    del argv
    metrics_lib.quiet_library_logs()
    config = flags.FLAGS.config
    workdir = flags.FLAGS.workdir
    try:
        run(config, workdir)
    except (results_lib.EvalError, benchmarks.BenchmarkError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None


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
