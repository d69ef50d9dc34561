"""Training data: loading, example selection, label overrides, replication,
shuffling, prompts.

Accepted sources (`resolve_source` turns a config value into a file):
  - a packaged name (`dsr_sub`, `pi1_r128`, `math500`: see `rlvr_jax.data.paper_data`);
  - veRL parquet / jsonl rows: `prompt` (chat messages), `reward_model.
    ground_truth`, `extra_info.index`;
  - plain jsonl rows with a problem and an answer field (`problem`/`question`,
    `answer`/`ground_truth`/`final_answer`);
  - a Hugging Face dataset directory: `datasets.save_to_disk` output (arrow
    files listed in state.json) or a hub snapshot holding parquet/jsonl files,
    also named by its hub id (`org/name`) when it is in the local HF cache.

The iterator is an explicit state machine (epoch, position) so that a
checkpoint can store it and a resumed run continues with the exact same
batches.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Sequence

import numpy as np

from rlvr_jax import io as io_lib
from rlvr_jax.data import chat_templates, paper_data

# The suffix the training prompts carry (docs/recipe.md), for jsonl sources that
# store bare problems and want the training-style instruction.
STEP_BY_STEP_SUFFIX = (
    " Let's think step by step and output the final answer within \\boxed{}."
)

_PROBLEM_KEYS = ("problem", "question")
_ANSWER_KEYS = ("answer", "ground_truth", "final_answer")


@dataclasses.dataclass(frozen=True)
class Example:
    """One training/validation problem.

    Attributes:
      index: the dataset's own id (veRL `extra_info.index`, else row number).
      messages: chat messages, each a dict with `role` and `content`.
      ground_truth: the reference answer string the reward compares against.
    """

    index: int
    messages: tuple[dict, ...]
    ground_truth: str


# ------------------------------------------------------------------- loading
def _as_str(value) -> str:
    if isinstance(value, list):  # OlympiadBench-style final_answer lists
        value = value[0] if value else ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # AMC stores 27.0 for "27"
    return str(value)


def _row_to_example(row: dict, row_number: int, where: str, suffix: str) -> Example:
    if "prompt" in row and isinstance(row["prompt"], (list, tuple)):
        reward_model = row.get("reward_model") or {}
        if "ground_truth" not in reward_model:
            raise ValueError(f"{where}: veRL row without reward_model.ground_truth")
        extra = row.get("extra_info") or {}
        messages = tuple(
            {"role": m["role"], "content": m["content"]} for m in row["prompt"]
        )
        if not messages:
            raise ValueError(f"{where}: empty prompt")
        index = extra.get("index")
        return Example(
            index=row_number if index is None else int(index),
            messages=messages,
            ground_truth=_as_str(reward_model["ground_truth"]),
        )
    problem = next((row[k] for k in _PROBLEM_KEYS if row.get(k)), None)
    answer = next((row[k] for k in _ANSWER_KEYS if row.get(k) is not None), None)
    if problem is None or answer is None:
        empty = [
            k
            for k in (*_PROBLEM_KEYS, *_ANSWER_KEYS)
            if k in row and row[k] in (None, "")
        ]
        if empty:
            raise ValueError(f"{where}: the row's {', '.join(empty)} is empty")
        raise ValueError(
            f"{where}: row has neither a veRL `prompt` nor problem/answer fields "
            f"(keys: {sorted(row)})"
        )
    index = row.get("id", row.get("index", row_number))
    return Example(
        index=int(index) if isinstance(index, (int, np.integer)) else row_number,
        messages=({"role": "user", "content": str(problem) + suffix},),
        ground_truth=_as_str(answer),
    )


def _read_rows(path: str) -> list[tuple[dict, str]]:
    """(row, location) pairs from a parquet, jsonl or HF dataset directory."""
    if os.path.isdir(path):
        state_file = os.path.join(path, "state.json")
        if os.path.exists(state_file):  # datasets.save_to_disk layout
            import pyarrow as pa

            with open(state_file) as f:
                files = [d["filename"] for d in json.load(f)["_data_files"]]
            rows = []
            for name in files:
                with pa.memory_map(os.path.join(path, name)) as source:
                    table = pa.ipc.open_stream(source).read_all()
                rows += [
                    (r, f"{path}/{name}:{i}") for i, r in enumerate(table.to_pylist())
                ]
            return rows
        files = sorted(
            glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True)
            + glob.glob(os.path.join(path, "**", "*.jsonl"), recursive=True)
        )
        if not files:
            raise FileNotFoundError(f"{path}: no parquet/jsonl files or state.json")
        return [item for f in files for item in _read_rows(f)]
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file not found: {path}")
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        return [(r, f"{path}:row {i}") for i, r in enumerate(rows)]
    if path.endswith((".jsonl", ".json")):
        return io_lib.read_jsonl_located(path)  # errors are ValueErrors
    raise ValueError(f"{path}: unsupported data format (want .parquet, .jsonl, a dir)")


def resolve_source(source: str) -> str:
    """The local file or directory a dataset config value names.

    Args:
      source: an existing path; else a packaged name (`paper_data.FILES`);
        else a Hugging Face dataset id (`org/name`) already in the local HF
        cache (nothing is downloaded: runs must not depend on a network).

    Raises:
      FileNotFoundError: saying what was tried and what is accepted.
    """
    source = paper_data.local_or_packaged(source)
    if os.path.exists(source):
        return source
    if source.count("/") == 1 and not source.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(source, repo_type="dataset", local_files_only=True)
        except Exception:  # noqa: BLE001 - any miss means "not cached"
            pass
    raise FileNotFoundError(
        f"data source {source!r} is not a file or directory, a packaged dataset "
        f"({', '.join(sorted(paper_data.FILES))}), or a Hugging Face dataset id in "
        "the local cache (fetch one with `huggingface-cli download --repo-type "
        "dataset ORG/NAME` on a machine with network access)"
    )


def load_examples(source: str, suffix: str = "") -> list[Example]:
    """All examples of a dataset, in file order.

    Args:
      source: a veRL parquet/jsonl file, a problem/answer jsonl, a HF dataset
        directory, a packaged name or a cached hub id (see `resolve_source`).
      suffix: appended to bare problems (not to veRL prompts, which already
        carry their instruction).
    """
    path = resolve_source(source)
    examples = [
        _row_to_example(row, i, where, suffix)
        for i, (row, where) in enumerate(_read_rows(path))
    ]
    if not examples:
        raise ValueError(f"{path}: no examples (an empty file?)")
    return examples


def builtin_task() -> list[Example]:
    """The one-example task of `tiny` runs: needs no files, answer space 0–9.

    A tiny random model with the tiny tokenizer (where `\\boxed{d}` is one
    token) answers it correctly by chance a few percent of the time, so GRPO
    has signal from the first step, the paper's one-example setting in small.
    """
    return [
        Example(
            index=0,
            messages=(
                {"role": "user", "content": "What is 3 + 4?" + STEP_BY_STEP_SUFFIX},
            ),
            ground_truth="7",
        )
    ]


def select(examples: Sequence[Example], indices: Sequence[int]) -> list[Example]:
    """The examples whose `index` is in `indices`, in the order given."""
    by_index = {}
    for ex in examples:
        by_index.setdefault(ex.index, ex)
    missing = [i for i in indices if i not in by_index]
    if missing:
        raise ValueError(f"example indices not in the dataset: {missing}")
    return [by_index[i] for i in indices]


def replicate(examples: Sequence[Example], size: int) -> list[Example]:
    """Repeats an example set to `size` rows (π1 × 128, or {π1, π13} × 64).

    Each example appears `size / len(examples)` times, as the reference's
    replicated parquet files store them.
    """
    if not examples:
        raise ValueError("cannot replicate an empty example set")
    if size % len(examples):
        raise ValueError(
            f"replication size {size} is not a multiple of {len(examples)} examples"
        )
    return [ex for ex in examples for _ in range(size // len(examples))]


def parse_label_override(spec: str) -> dict[int, str]:
    """{example index: label} from "INDEX=LABEL;INDEX=LABEL" ("" gives {}).

    A label runs from the first "=" to the next ";" (it may hold "=" but not
    ";"), spaces around it trimmed.

    Raises:
      ValueError: one line naming the malformed entry or repeated index.
    """
    overrides: dict[int, str] = {}
    for entry in filter(None, (e.strip() for e in spec.split(";"))):
        index, sep, label = (part.strip() for part in entry.partition("="))
        if not sep or not label or not index.removeprefix("-").isdigit():
            raise ValueError(
                f"label override {entry!r} is not INDEX=LABEL (an integer "
                "example index, '=', a non-empty label; entries split by ';')"
            )
        if int(index) in overrides:
            raise ValueError(f"label override names example index {index} twice")
        overrides[int(index)] = label
    return overrides


def override_labels(
    examples: Sequence[Example], overrides: dict[int, str]
) -> list[Example]:
    """`examples` with the ground truth of each index in `overrides` replaced.

    For the label-robustness ablation: training on a wrong label.

    Raises:
      ValueError: an index that none of `examples` has (listing those they have
        when they are few).
    """
    present = {ex.index for ex in examples}
    missing = sorted(set(overrides) - present)
    if missing:
        have = sorted(present)
        shown = f"; they are {have}" if len(have) <= 16 else ""
        raise ValueError(
            f"label override for example index(es) {missing} not among the "
            f"{len(have)} selected examples{shown}"
        )
    return [
        dataclasses.replace(ex, ground_truth=overrides[ex.index])
        if ex.index in overrides
        else ex
        for ex in examples
    ]


# ------------------------------------------------------------------ iterator
@dataclasses.dataclass
class Batches:
    """Shuffled, drop-last batches over epochs, resumable from (epoch, position).

    The permutation of epoch e is drawn from `seed + e`, so any position can
    be reconstructed without replaying earlier epochs.
    """

    examples: Sequence[Example]
    batch_size: int
    seed: int
    shuffle: bool = True
    epoch: int = 0
    position: int = 0

    def __post_init__(self):
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if len(self.examples) < self.batch_size:
            raise ValueError(
                f"dataset has {len(self.examples)} examples, fewer than one batch "
                f"of {self.batch_size} (drop_last would yield nothing)"
            )

    def _order(self, epoch: int) -> np.ndarray:
        n = len(self.examples)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng(self.seed + epoch).permutation(n)

    def next(self) -> list[Example]:
        n_full = len(self.examples) // self.batch_size * self.batch_size
        if self.position + self.batch_size > n_full:
            self.epoch, self.position = self.epoch + 1, 0
        order = self._order(self.epoch)
        rows = order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return [self.examples[i] for i in rows]

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def restore(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


# ------------------------------------------------------------------- prompts
def render_prompt(tokenizer, messages: Sequence[dict]) -> str:
    """The prompt text for chat `messages`, ending with the assistant header.

    Uses the tokenizer's own chat template when it has one (Qwen2.5-Math's
    inserts its default system prompt); otherwise the Qwen2.5-Math template.
    """
    messages = [dict(m) for m in messages]
    template = getattr(tokenizer, "chat_template", None) or chat_templates.QWEN_MATH
    return tokenizer.apply_chat_template(
        messages,
        chat_template=template,
        tokenize=False,
        add_generation_prompt=True,
        # Llama 3.2's template prints today's date unless given one: a fixed
        # date keeps prompts, and so runs, the same every day; others ignore it.
        date_string=chat_templates.DATE_STRING,
    )


def encode_prompts(
    tokenizer,
    examples: Sequence[Example],
    max_prompt_len: int,
) -> list[list[int]]:
    """Token ids of each example's rendered prompt.

    Raises:
      ValueError: naming the example, when a prompt exceeds `max_prompt_len`
        (never silently truncated: a cut prompt changes the task).
    """
    if not examples:
        return []
    texts = [render_prompt(tokenizer, ex.messages) for ex in examples]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    for ex, row in zip(examples, ids, strict=True):
        if len(row) > max_prompt_len:
            raise ValueError(
                f"example index {ex.index}: prompt has {len(row)} tokens, over the "
                f"limit max_prompt_len={max_prompt_len}"
            )
    return [list(r) for r in ids]
