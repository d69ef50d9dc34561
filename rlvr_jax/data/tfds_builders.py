"""TensorFlow Datasets builders for the evaluation benchmarks (no TensorFlow).

One builder, `rlvr_eval_math`, with a config per registered benchmark
(`rlvr_eval_math/math500`, `rlvr_eval_math/aime24`, ...). It prepares the
single `test` split in the array_record format, which `tensorflow-datasets`
writes and reads without TensorFlow, from:

  - a local directory of the standard jsonl files (`<dir>/<name>/test.jsonl`,
    e.g. the evaluation harness's `data` folder), passed as TFDS's manual
    directory; or
  - the files packaged with rlvr_jax (`rlvr_jax.data.paper_data`) when no manual
    directory is given, so `tfds.builder("rlvr_eval_math/math500")
    .download_and_prepare()` works offline.

Each example stores the problem text and gold answer as `rlvr_jax.data.suites`
reads them, plus the raw row as JSON so nothing from the source is lost (the
problem's categories, MATH500's subject and level, are read back from it).
Records keep file order (shuffling is disabled): row i of the split is line i
of the source.

    from rlvr_jax.data import tfds_builders
    rows = tfds_builders.read("aime24", data_dir="~/tfds", source_dir="data/eval")
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow_datasets as tfds

from rlvr_jax.data import paper_data, suites

_FILE_FORMAT = "array_record"


class RlvrEvalMath(tfds.core.GeneratorBasedBuilder):
    """The paper's math benchmarks, one builder config per benchmark."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Problem, gold answer and raw row per example."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name=b.name, description=f"{b.title} test split")
        for b in suites.REGISTRY.values()
    ]
    # Setting instructions enables `dl_manager.manual_dir` (the local source).
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass a directory holding <benchmark>/test.jsonl (the Qwen2.5-Math "
        "evaluation data layout) as download_config.manual_dir."
    )

    def __init__(self, *, file_format=None, **kwargs):
        # array_record by default: TFDS's default (tfrecord) needs TensorFlow,
        # so a plain `tfds.builder("rlvr_eval_math/math500")` would fail.
        super().__init__(file_format=file_format or _FILE_FORMAT, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Math evaluation problems with gold answers.",
            features=tfds.features.FeaturesDict(
                {
                    "index": np.int64,
                    "problem": tfds.features.Text(),
                    "gold": tfds.features.Text(),
                    "row": tfds.features.Text(),
                }
            ),
            # Row i must stay line i of the source: generations are audited
            # against it, and replicated files are grouped by it.
            disable_shuffling=True,
        )

    def _source_file(self, dl_manager) -> str:
        benchmark = suites.get(self.builder_config.name)
        try:
            manual = os.fspath(dl_manager.manual_dir)
        except AssertionError:  # raised by TFDS when no manual dir exists
            manual = None
        return suites.standard_path(
            paper_data.eval_dir() if manual is None else manual, benchmark.name
        )

    def _split_generators(self, dl_manager):
        return {"test": self._generate_examples(self._source_file(dl_manager))}

    def _generate_examples(self, path: str):
        benchmark = suites.get(self.builder_config.name)
        for i, (row, where) in enumerate(suites.read_jsonl(path)):
            problem, gold = suites.parse_row(benchmark, row, where)
            yield (
                i,
                {
                    "index": i,
                    "problem": problem,
                    "gold": gold,
                    "row": json.dumps(row, ensure_ascii=False, sort_keys=True),
                },
            )


def builder(name: str, data_dir: str | None = None) -> RlvrEvalMath:
    """The array_record builder of benchmark `name` (not yet prepared)."""
    suites.get(name)  # a clear error for an unknown name
    return RlvrEvalMath(
        config=name,
        data_dir=os.path.expanduser(data_dir) if data_dir else None,
        file_format=_FILE_FORMAT,
    )


def prepare(
    name: str, data_dir: str | None = None, source_dir: str | None = None
) -> RlvrEvalMath:
    """Prepares benchmark `name` once (a no-op when already prepared).

    Args:
      name: a registered benchmark.
      data_dir: TFDS data directory (None: TFDS's default).
      source_dir: a local directory of standard jsonl files; None: the
        packaged files.

    Raises:
      BenchmarkError: a missing source file or a malformed row, by file/line.
    """
    b = builder(name, data_dir)
    if source_dir is not None:
        path = suites.standard_path(source_dir, name)
        if not os.path.isfile(path):
            raise suites.BenchmarkError(f"benchmark file not found: {path}")
    config = tfds.download.DownloadConfig(
        manual_dir=os.path.expanduser(source_dir) if source_dir else None
    )
    b.download_and_prepare(download_config=config)
    return b


def read(
    name: str, data_dir: str | None = None, source_dir: str | None = None
) -> list[dict]:
    """All examples of benchmark `name`, in source order, as plain dicts.

    Each dict has `index` (int), `problem`, `gold` and `row` (str; the raw row
    as JSON). Prepares the dataset first when needed.
    """
    source = prepare(name, data_dir, source_dir).as_data_source(split="test")

    def text(x) -> str:
        return x.decode("utf-8") if isinstance(x, bytes) else str(x)

    return [
        {
            "index": int(ex["index"]),
            "problem": text(ex["problem"]),
            "gold": text(ex["gold"]),
            "row": text(ex["row"]),
        }
        for ex in (source[i] for i in range(len(source)))
    ]


def load_problems(
    name: str, tfds_dir: str | None, source_dir: str | None
) -> list[suites.Problem]:
    """Problems of benchmark `name` from its TFDS builder (prepared on demand).

    The same problems, golds, categories and order as `suites.load_jsonl` of
    the source.

    Args:
      name: a registered benchmark name.
      tfds_dir: TFDS data_dir (None: the TFDS default).
      source_dir: a local directory of standard jsonl files to prepare from;
        None prepares from the packaged files (offline).
    """
    benchmark = suites.get(name)
    records = read(name, data_dir=tfds_dir, source_dir=source_dir)
    # Categories come from the stored raw row, so builds prepared before
    # Problems carried them (same features, same version) still give them.
    return suites.grouped(
        benchmark,
        [(r["problem"], r["gold"]) for r in records],
        [
            suites.parse_categories(
                benchmark, json.loads(r["row"]), f"tfds:{name}:{r['index']}"
            )
            for r in records
        ],
    )
