"""Evaluation tasks: what one benchmark run samples, read from the eval config.

A `Task` is a benchmark's problems (the first `data.limit` groups), how they
are sampled (`Protocol`: the registry's temperature and sample count unless
the config overrides them) and where they came from. `load_tasks` builds every
configured task and checks the template and the scoring rule before any model
is loaded, so a bad file or name fails in seconds. `render` turns a problem
into prompt text.

Sample counts and temperatures can differ per benchmark in one run (rllm's
protocol for DeepSeek-R1-Distill: avg@16 on MATH500, avg@64 on AIME):
`sampling.n_by_benchmark` / `sampling.temperature_by_benchmark` take
"math500=16,aime24=64" (`parse_per_benchmark`) and win over `sampling.n` /
`sampling.temperature`, which win over the registry's protocol.

No JAX here: `rlvr_jax.evaluate` samples and scores what this module loads.
"""

from __future__ import annotations

import dataclasses
import os

from rlvr_jax.data import examples as examples_lib
from rlvr_jax.data import paper_data, suites
from rlvr_jax.reward import checker


class EvalError(ValueError):
    """Bad evaluation input (model, step, config); the message names which."""


# Prompt templates. "qwen25-math-cot" is the paper's eval template: the chat
# template with the bare problem as the only user turn. Any other string that
# contains "{problem}" is used as raw prompt text (no chat template).
TEMPLATES = ("qwen25-math-cot", "qwen25-math-cot-step")


def check_template(template: str) -> None:
    """Raises EvalError unless `template` is in TEMPLATES or holds {problem}."""
    if template not in TEMPLATES and "{problem}" not in template:
        raise EvalError(
            f"template {template!r}: want one of {TEMPLATES} or a string "
            "with {problem}"
        )


def render(tokenizer, template: str, problem: str) -> str:
    """The prompt text of `problem` under `template` (see TEMPLATES)."""
    check_template(template)
    if template == "qwen25-math-cot":
        return examples_lib.render_prompt(
            tokenizer, [{"role": "user", "content": problem}]
        )
    if template == "qwen25-math-cot-step":  # the training prompt's suffix
        content = problem + examples_lib.STEP_BY_STEP_SUFFIX
        return examples_lib.render_prompt(
            tokenizer, [{"role": "user", "content": content}]
        )
    return template.replace("{problem}", problem)


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
        return suites.describe_protocol(self.temperature, self.n)


@dataclasses.dataclass(frozen=True)
class Task:
    """One benchmark ready to run: its problems, protocol and data source."""

    benchmark: suites.Benchmark
    problems: tuple[suites.Problem, ...]
    protocol: Protocol
    data_source: str

    def settings(self, config, model: str) -> dict:
        """What must match for saved generations of this task to be reused."""
        return {
            "model": model,
            "benchmark": self.benchmark.name,
            "data": self.data_source,
            "n_problems": len({p.group for p in self.problems}),
            "template": config.template,
            "seed": config.seed,
            **dataclasses.asdict(self.protocol),
            **score_settings(config),
        }


def score_settings(config) -> dict:
    """The scoring rule (`score.mode`, `score.think`) when it is not the
    default (lenient "eval" extraction, think rule off), else nothing.

    Saved generations carry their grades, so they are reused only under the
    rule that graded them; the default adds no key, so that workdirs written
    before these keys existed stay reusable.
    """
    s = config.score
    if s.mode == "eval" and not s.think:
        return {}
    return {"score": {"mode": s.mode, "think": bool(s.think)}}


def parse_per_benchmark(spec: str, key: str, cast, valid, want: str) -> dict:
    """{benchmark: value} from "name=value,name=value" (`key` names the config
    field in errors).

    Names must be registry benchmarks (a typo is an error, not a silent
    default); a benchmark named here but not run is ignored, so one protocol
    string serves any subset of `benchmarks`.

    Args:
      spec: the spec string; "" gives {}.
      key: the config field, for messages.
      cast: turns a value string into a value (int, float).
      valid: whether a cast value is allowed.
      want: what a value must be, in words, for messages.

    Raises:
      EvalError: an unknown or repeated name, or a bad value, naming which.
    """
    out = {}
    for item in filter(None, (t.strip() for t in spec.split(","))):
        name, sep, text = (t.strip() for t in item.partition("="))
        if not sep or not name:
            raise EvalError(f"{key}: {item!r} is not name={want}")
        if name not in suites.REGISTRY:
            raise EvalError(
                f"{key}: unknown benchmark {name!r} (known: "
                f"{', '.join(suites.REGISTRY)})"
            )
        if name in out:
            raise EvalError(f"{key}: {name!r} is given twice")
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not valid(value):
            raise EvalError(f"{key}: {item!r}: the value must be {want}")
        out[name] = value
    return out


def _check_score(config) -> None:
    if config.score.mode not in checker.MODES:
        raise EvalError(
            f"score.mode={config.score.mode!r}: want one of {checker.MODES}"
        )


def _load_problems(config, name: str, path: str | None):
    """A benchmark's problems (first `data.limit` of them) and their source.

    An explicit `name=path` is read as jsonl whatever `data.format` says; the
    format decides how `data.dir` is read.
    """
    d = config.data
    if d.format not in ("jsonl", "tfds"):
        raise EvalError(f"data.format={d.format!r}: want 'jsonl' or 'tfds'")
    if path:
        problems, source = suites.load_jsonl(name, path), os.path.abspath(path)
    elif d.format == "tfds":
        from rlvr_jax.data import tfds_builders  # lazy: tensorflow_datasets is heavy

        problems = tfds_builders.load_problems(name, d.tfds_dir or None, d.dir or None)
        source = f"tfds:{name}"
    else:
        data_dir = os.path.abspath(d.dir) if d.dir else paper_data.eval_dir()
        problems, source = suites.load_jsonl(name, data_dir), data_dir
    if d.limit:
        # Whole groups, so a replicated file keeps all samples of a problem.
        keep = set(sorted({p.group for p in problems})[: d.limit])
        problems = [p for p in problems if p.group in keep]
    return problems, source


def load_tasks(config) -> list[Task]:
    """Every configured benchmark, loaded and checked before any model is.

    Raises:
      BenchmarkError, EvalError: an unknown name, missing file, bad row or
        template, naming which.
    """
    check_template(config.template)
    _check_score(config)
    s, tasks = config.sampling, []
    n_by = parse_per_benchmark(
        s.n_by_benchmark,
        "sampling.n_by_benchmark",
        int,
        lambda n: n > 0,
        "a positive integer",
    )
    t_by = parse_per_benchmark(
        s.temperature_by_benchmark,
        "sampling.temperature_by_benchmark",
        float,
        lambda t: t >= 0,  # NaN fails too
        "a temperature >= 0",
    )
    for name, path in suites.parse_spec(config.benchmarks):
        bench = suites.get(name)
        problems, data_source = _load_problems(config, name, path)
        temperature = bench.temperature if s.temperature < 0 else s.temperature
        protocol = Protocol(
            temperature=t_by.get(name, temperature),
            n=n_by.get(name, bench.n_samples if s.n <= 0 else s.n),
            max_new_tokens=s.max_new_tokens,
            top_p=s.top_p,
            top_k=s.top_k,
        )
        tasks.append(Task(bench, tuple(problems), protocol, data_source))
    return tasks
