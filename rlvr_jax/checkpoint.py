"""Training checkpoints: an orbax CheckpointManager wrapper.

A checkpoint at step s lives in `<workdir>/checkpoints/<s>/` and holds three
items: `params` (the policy), `train` (optimizer state, counters: everything
else in the learner state) and `meta` (JSON: model config, data-iterator
position, per-example accuracy history, RNG seed). Params are their own item
so evaluation can restore a policy without knowing the optimizer.

Orbax writes each step into a temporary directory and renames it when
complete, so a run killed mid-save leaves the previous checkpoint as the
latest valid one.

Resume order (what `train.run` does on start):
  1. the newest checkpoint in `<workdir>/checkpoints` (preemption restart);
  2. else `checkpoint.resume_from`, an explicit checkpoint directory (a
     workdir, its `checkpoints/` folder, or one step folder), as new
     initial weights;
  3. else pretrained weights from `model.path` (a Hugging Face directory);
  4. else a random init (only for `tiny`-style presets).
The reference policy of the KL term is always the weights of 2–4, i.e. the
weights the run started from, rebuilt identically on every restart.

Saved models for evaluation (`find_models`, `load_model`, `load_tokenizer`):
a Hugging Face directory, a directory of per-step HF exports (`<step>/` or
`step_<step>/`, as a run's `hf/`), or orbax checkpoints (a workdir, its
`checkpoints/` folder, or one step folder).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import orbax.checkpoint as ocp

from rlvr_jax.data import tokenizer as tokenizer_lib
from rlvr_jax.model import params as params_lib
from rlvr_jax.model.decoder import ModelConfig, abstract_params


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(workdir, "checkpoints")


class Checkpointer:
    """Saves and restores (params, train state, meta) at integer steps."""

    def __init__(
        self, directory: str, *, keep: int | None = 3, async_save: bool = True
    ):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                enable_async_checkpointing=async_save,
                create=True,
            ),
        )

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, params: Any, train: Any, meta: dict) -> None:
        """Starts saving; device→host copies finish before this returns."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                train=ocp.args.StandardSave(train),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )

    def restore(self, step: int, abstract_params: Any, abstract_train: Any):
        """(params, train, meta) with arrays placed as the abstract trees say."""
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_params),
                train=ocp.args.StandardRestore(abstract_train),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored["params"], restored["train"], restored["meta"]

    def restore_params(self, step: int, abstract: Any) -> Any:
        restored = self._manager.restore(
            step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract))
        )
        return restored["params"]

    def restore_meta(self, step: int) -> dict:
        restored = self._manager.restore(
            step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
        )
        return restored["meta"]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def config_to_meta(config: ModelConfig) -> dict:
    return dataclasses.asdict(config)


def config_from_meta(meta: dict) -> ModelConfig:
    fields = dict(meta)
    fields["eos_token_ids"] = tuple(fields.get("eos_token_ids") or ())
    return ModelConfig(**fields)


def resolve(path: str) -> tuple[str, int | None]:
    """(checkpoints directory, step or None) for a workdir/ckpt dir/step dir.

    The step is that of a step directory (`<checkpoints>/<step>/`), else None.
    """
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return os.path.join(path, "checkpoints"), None
    base = os.path.basename(path.rstrip("/"))
    if base.isdigit() and os.path.isdir(path):
        return os.path.dirname(path), int(base)
    return path, None


def available_steps(workdir: str) -> list[int]:
    """The steps with a complete checkpoint under a training workdir."""
    directory, _ = resolve(workdir)
    if not os.path.isdir(directory):
        return []
    return Checkpointer(directory, async_save=False).steps()


def load_params(
    path: str, step: int | None = None, shardings: Any = None
) -> tuple[ModelConfig, Any]:
    """A saved policy: (ModelConfig, params) from a workdir or checkpoint dir.

    Args:
      path: a training workdir, its `checkpoints/` directory, or one step's
        directory.
      step: which step; the latest when None (or the step of a step dir).
      shardings: a pytree of shardings for the params, or one sharding for
        every leaf (e.g. replicated over a mesh); one device when None.

    Raises:
      FileNotFoundError: no checkpoint there, or no such step (the available
        steps are listed).
    """
    directory, step_in_path = resolve(path)
    step = step if step is not None else step_in_path
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoints under {path}")
    ckpt = Checkpointer(directory, async_save=False)
    steps = ckpt.steps()
    if not steps:
        raise FileNotFoundError(f"no complete checkpoint under {directory}")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise FileNotFoundError(
            f"checkpoint step {step} does not exist in {directory}; "
            f"available steps: {steps}"
        )
    config = config_from_meta(ckpt.restore_meta(step)["model_config"])
    abstract = abstract_params(config)
    if shardings is None:
        shardings = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _, one=shardings: one, abstract)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract,
        shardings,
    )
    params = ckpt.restore_params(step, abstract)
    ckpt.close()
    return config, params


# ---------------------------------------------------------- saved models
@dataclasses.dataclass(frozen=True)
class ModelSource:
    """One saved model.

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
        """A directory name for its results: `step_<n>`, else the model dir's."""
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


def select_steps(available: Sequence[int], spec: str, where: str) -> list[int]:
    """The steps `spec` ("all", "latest" or "0,20,40") picks from `available`.

    Raises:
      FileNotFoundError: nothing available, or a step that does not exist
        (the available steps are listed).
      ValueError: a malformed `spec`.
    """
    available = sorted(available)
    if not available:
        raise FileNotFoundError(f"no checkpoints found in {where}")
    spec = spec.strip()
    if spec in ("all", "latest"):
        return available if spec == "all" else available[-1:]
    try:
        wanted = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise ValueError(
            f"model.steps={spec!r}: want 'all', 'latest' or a comma list of steps"
        ) from None
    missing = [s for s in wanted if s not in available]
    if missing:
        raise FileNotFoundError(
            f"checkpoint step(s) {missing} do not exist in {where}; "
            f"available steps: {available}"
        )
    return wanted


def find_models(location: str, steps: str, step_label: int = -1) -> list[ModelSource]:
    """The saved models at `location` (see the module docstring).

    Args:
      location: a HF directory, a directory of per-step HF directories, or an
        orbax workdir / checkpoints folder / step folder.
      steps: which steps of a sweep: "all", "latest" or "0,20".
      step_label: a step to label a single HF model with (-1: none).

    Raises:
      FileNotFoundError, ValueError: as `select_steps`, or a missing location.
    """
    if not os.path.isdir(location):
        raise FileNotFoundError(f"model path not found: {location}")
    if _is_hf_dir(location):
        return [ModelSource("hf", location, None if step_label < 0 else step_label)]
    hf_steps = {
        int(m.group(1)): os.path.join(location, name)
        for name in os.listdir(location)
        if (m := _STEP_DIR.match(name)) and _is_hf_dir(os.path.join(location, name))
    }
    if hf_steps:
        chosen = select_steps(list(hf_steps), steps, location)
        return [ModelSource("hf", hf_steps[s], s) for s in chosen]
    directory, step = resolve(location)
    if step is not None:  # one orbax step folder
        return [ModelSource("orbax", directory, step)]
    chosen = select_steps(available_steps(location), steps, location)
    return [ModelSource("orbax", location, s) for s in chosen]


def load_model(
    source: ModelSource, param_dtype: str, dtype: str, sharding: Any
) -> tuple[ModelConfig, Any]:
    """A saved model's (ModelConfig, params), every leaf placed by `sharding`.

    Params are stored in `param_dtype` and computed in `dtype`; remat is off
    (the model is only sampled).

    Raises:
      FileNotFoundError: missing files or step.
    """
    if source.kind == "hf":
        shapes = abstract_params(params_lib.read_config(source.path))
        return params_lib.load_hf(
            source.path,
            jax.numpy.dtype(param_dtype),
            compute_dtype=dtype,
            shardings=jax.tree.map(lambda _: sharding, shapes),
        )
    saved, params = load_params(source.path, source.step, shardings=sharding)
    params = jax.tree.map(lambda x: x.astype(param_dtype), params)
    return saved.replace(dtype=dtype, param_dtype=param_dtype, remat=False), params


def load_tokenizer(source: ModelSource, spec: str = ""):
    """A saved model's tokenizer: `spec` ("tiny" or a HF dir), else its own.

    An orbax checkpoint's own is the `tokenizer/` folder its training run saved
    in the workdir.

    Raises:
      FileNotFoundError: no tokenizer there, saying how to name one.
    """
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
    raise FileNotFoundError(
        f"orbax checkpoint {source.path} step {source.step} carries no tokenizer: "
        "set --config.tokenizer to the base model's directory (or 'tiny')"
    )
