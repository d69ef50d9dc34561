"""Evaluation tasks: what one benchmark run samples, read from the eval config.

A `Task` is a benchmark's problems (the first `data.limit` groups), how they
are sampled (`Protocol`: the registry's temperature and sample count unless
the config overrides them) and where they came from. `load_tasks` builds every
configured task and checks the template before any model is loaded, so a bad
file or name fails in seconds. `render` turns a problem into prompt text.

No JAX here: `rlvr_jax.evaluate` samples and scores what this module loads.
"""

from __future__ import annotations

import dataclasses
import os

from rlvr_jax.data import examples as examples_lib
from rlvr_jax.data import paper_data, suites


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
        }


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
    s, tasks = config.sampling, []
    for name, path in suites.parse_spec(config.benchmarks):
        bench = suites.get(name)
        problems, data_source = _load_problems(config, name, path)
        protocol = Protocol(
            temperature=bench.temperature if s.temperature < 0 else s.temperature,
            n=bench.n_samples if s.n <= 0 else s.n,
            max_new_tokens=s.max_new_tokens,
            top_p=s.top_p,
            top_k=s.top_k,
        )
        tasks.append(Task(bench, tuple(problems), protocol, data_source))
    return tasks
