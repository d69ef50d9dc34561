"""Training checkpoints: an orbax CheckpointManager wrapper.

A checkpoint at step s lives in `<workdir>/checkpoints/<s>/` and holds four
items: `params` (the policy), `train` (optimizer state, counters: everything
else in the learner state), `meta` (JSON: model config, data-iterator
position, per-example accuracy history, RNG seed) and `digests` (JSON: a
digest of every array saved in `params` and `train`). Params are their own
item so evaluation can restore a policy without knowing the optimizer.

Orbax writes each step into a temporary directory
(`<s>.orbax-checkpoint-tmp*`) and renames it when complete, so a run killed
mid-save, or a save that failed (a full disk), leaves the previous checkpoint
as the latest valid one: orbax lists only renamed steps. A failed save
raises `CheckpointSaveError` (an OSError naming the step directory and the
cause) when the cause is an OS error, else a ValueError.

Verified resume (`Checkpointer.restore_verified`, what `build.start_state`
calls): a file of a finished checkpoint can still be damaged later (a disk
fault, a truncated copy). Orbax's array chunks carry no checksum: flipped
bytes either fail to decode or restore silently as wrong values. Each save
therefore records a digest per array (below); a resume tries the newest step first and skips one that is
unreadable, whose arrays differ from their digests, or that holds a
non-finite float (a diverged run's checkpoint), printing one line per skipped
step and never deleting it. A step saved before digests existed restores
unverified, saying so. A later save of a skipped step's number moves the
damaged directory aside to `<s>.replaced-<UTC time>` (orbax refuses to write
over a step).

The digest of an array is computed on its devices by one small program: two
32-bit sums, over every element, of a bijective mix of the element's bits
and its flat index in the global array. It depends only on the global
array's values, dtype and shape, not on how it is sharded, so a step saved on
one mesh verifies on another, and every process of a multi-process run
computes the same digest (a replicated result) and so reaches the same
verdict; no process needs the whole array on its host, and no second copy of
the state goes to the host. A change to one 32-bit word changes both sums
for certain; other damage goes undetected with a chance of about 2^-64. It detects
damage, not tampering. The digests are taken from the very arrays handed to
orbax, before `save` returns (orbax copies them to the host in the same
call), so they describe what the asynchronous save writes.

Resume order (what `train.run` does on start):
  1. the newest intact checkpoint in `<workdir>/checkpoints` (preemption
     restart);
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
import functools
import gc
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import PartitionSpec as P

from rlvr_jax import io as io_lib
from rlvr_jax import sharding as sharding_lib
from rlvr_jax.data import tokenizer as tokenizer_lib
from rlvr_jax.model import params as params_lib
from rlvr_jax.model.decoder import ModelConfig, abstract_params


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(workdir, "checkpoints")


class CheckpointSaveError(OSError):
    """A checkpoint save that failed for an OS reason (a full disk, no write
    permission).

    `errno` is the cause's, `strerror` the cause in words and `filename` the
    step's directory, so `io.describe_os_error` gives `<dir>/<step>: no space
    left on device`; the message adds what orbax or tensorstore said.
    """

    def __init__(self, code: int, cause: str, where: str, detail: str):
        super().__init__(code, cause, where)
        self.detail = detail

    def __str__(self) -> str:
        return f"checkpoint {self.filename} not saved: {self.strerror} ({self.detail})"


class Checkpointer:
    """Saves and restores (params, train state, meta) at integer steps, with
    digests that a resume verifies (module docstring)."""

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
        self._pending: int | None = None  # a step whose async save may run

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, params: Any, train: Any, meta: dict) -> None:
        """Starts saving; device→host copies finish before this returns.

        The digests of `params` and `train` are computed first, from the same
        arrays, so they describe exactly what the (asynchronous) save writes.
        A step that already exists can only be one a resume skipped as
        damaged (a run resumes from its newest intact step and saves later
        ones): it is moved aside to `<step>.replaced-<UTC time>`, not deleted.

        Raises:
          CheckpointSaveError: this save, or the previous asynchronous one,
            failed for an OS reason; ValueError: for another reason.
        """
        digests = {
            "format": _DIGEST_FORMAT,
            "params": _inspect(params)[0],
            "train": _inspect(train)[0],
        }
        self.wait()  # orbax waits here anyway; this names a failed previous step
        if step in self._manager.all_steps():
            self._move_aside(step)
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    params=ocp.args.StandardSave(params),
                    train=ocp.args.StandardSave(train),
                    meta=ocp.args.JsonSave(meta),
                    digests=ocp.args.JsonSave(digests),
                ),
                force=True,
            )
        except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise many kinds
            raise self._save_error(step, e) from e
        self._pending = step

    def restore(self, step: int, abstract_params: Any, abstract_train: Any):
        """(params, train, meta) with arrays placed as the abstract trees say;
        not verified (`restore_verified` is)."""
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_params),
                train=ocp.args.StandardRestore(abstract_train),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored["params"], restored["train"], restored["meta"]

    def restore_verified(
        self,
        abstract_params: Any,
        abstract_train: Any,
        log: Callable[[str], None] | None = None,
    ) -> tuple[int, Any, Any, dict] | None:
        """The newest intact checkpoint: (step, params, train, meta).

        Tries the steps newest first. A step is skipped when orbax cannot
        read it, when an array differs from its saved digest, or when a
        floating array holds a NaN or an infinity; each skipped step gets one
        line, `checkpoint <dir>/<step> skipped: <reason>; resuming from step
        <k>`, and stays where it is. A step saved without digests is restored
        unverified (one line says so), still checked for non-finite values.
        Every process reaches the same verdict on each step.

        Args:
          abstract_params, abstract_train: the trees to restore into
            (ShapeDtypeStructs carrying their shardings).
          log: where the lines go; printed by process 0 when None.

        Returns:
          None when there is no checkpoint at all.

        Raises:
          ValueError: no step is intact; names the directory and each step's
            reason.
        """
        log = log or _say
        skipped: list[tuple[int, str]] = []
        for step in reversed(self.steps()):
            found, reason, unverified = self._restore_checked(
                step, abstract_params, abstract_train
            )
            if found is None:
                skipped.append((step, reason))
                # A failed orbax restore leaves coroutines in reference
                # cycles that can hold restored shards: free them now, before
                # the next step is restored beside them.
                gc.collect()
                continue
            for bad, why in skipped:
                log(
                    f"checkpoint {self.directory}/{bad} skipped: {why}; "
                    f"resuming from step {step}"
                )
            if unverified:
                log(
                    f"checkpoint {self.directory}/{step} {unverified}: resuming "
                    "from it unverified"
                )
            return (step, *found)
        if not skipped:
            return None
        reasons = "; ".join(f"step {s}: {why}" for s, why in skipped)
        raise ValueError(
            f"no intact checkpoint in {self.directory} ({reasons}); move the "
            "directory aside to start the run afresh"
        )

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
        """Waits for the asynchronous save in flight.

        Raises:
          CheckpointSaveError, ValueError: that save failed (see `save`).
        """
        step, self._pending = self._pending, None
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise many kinds
            raise self._save_error(step, e) from e

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._manager.close()

    # -------------------------------------------------------------- internals
    def _restore_checked(self, step: int, abstract_params: Any, abstract_train: Any):
        """((params, train, meta) or None, why skipped, why unverified) for
        one step; a reason is None where there is none.

        The processes agree twice, so that all of them resume from the same
        step: on whether the restore worked (a file that only one process
        reads can fail there alone; the verification that follows is a
        collective every process must join), and on the verdict.
        """
        found, reason, saved = None, None, None
        unverified = "has no digests (saved before checkpoints carried them)"
        try:
            verified = self._has_digests(step)
            items = {
                "params": ocp.args.StandardRestore(abstract_params),
                "train": ocp.args.StandardRestore(abstract_train),
                "meta": ocp.args.JsonRestore(),
            }
            if verified:
                items["digests"] = ocp.args.JsonRestore()
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
            found = (restored["params"], restored["train"], restored["meta"])
            if verified:
                saved = restored["digests"]
                unverified = None
                if saved.get("format") != _DIGEST_FORMAT:  # a newer program's
                    unverified = f"has digests of format {saved.get('format')!r}"
                    saved = None
            del restored
        except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise many kinds
            reason = f"unreadable ({_brief(e)})"
        if sharding_lib.any_process(reason is not None):
            return None, reason or "unreadable on another process", unverified
        reason = _verify(found[0], found[1], saved)
        if sharding_lib.any_process(reason is not None):
            # Nothing keeps the rejected arrays: they are freed before the
            # next step is restored (two full states may not fit in memory).
            return None, reason or "damaged on another process", unverified
        return found, None, unverified

    def _has_digests(self, step: int) -> bool:
        """Whether `step` was saved with digests: its metadata lists the item
        (so a deleted `digests/` folder is damage, not an old checkpoint), or
        the folder is there."""
        if (self._step_dir(step) / "digests").exists():
            return True
        try:
            handlers = self._manager.metadata(step).item_handlers or {}
        except Exception:  # noqa: BLE001 - unreadable metadata: the restore says so
            return False
        return "digests" in handlers

    def _step_dir(self, step: int) -> epath.Path:
        return epath.Path(self.directory) / str(step)

    def _move_aside(self, step: int) -> None:
        """Moves an existing (skipped) step out of orbax's way; process 0
        moves it, every process then forgets it."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = epath.Path(self.directory) / f"{step}.replaced-{stamp}"
        if jax.process_index() == 0:
            self._step_dir(step).rename(target)
            _say(
                f"checkpoint {self.directory}/{step} moved to {target}: "
                f"a new step {step} replaces it"
            )
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"rlvr_jax checkpoint replace {step}")
        self._manager.reload()

    def _save_error(self, step: int | None, e: Exception) -> Exception:
        """A failed save as an error naming the step directory and the cause."""
        where = f"{self.directory}/{step}" if step is not None else self.directory
        code = _os_errno(e)
        if code is not None:
            cause = io_lib.describe_os_error(OSError(code, os.strerror(code)))
            return CheckpointSaveError(code, cause, where, _brief(e))
        return ValueError(f"checkpoint {where} not saved: {_brief(e)}")


# ------------------------------------------------------------------ digests
_DIGEST_FORMAT = 1  # bump when the digest of an array changes
_SEEDS = (0x9E3779B9, 0x7F4A7C15)  # one per 32-bit sum: two unrelated sums


def _fmix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's finalizer: a bijection on uint32 that spreads every input
    bit over the output, so two different words never mix to the same one."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _words(x: jax.Array) -> jax.Array:
    """An array's bits as uint32 words (a 64-bit element gives two)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = x.dtype.itemsize
    if size in (1, 2):
        unsigned = jnp.uint8 if size == 1 else jnp.uint16
        return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(x, jnp.uint32)  # 4 bytes; 8: (..., 2)


def _check_array(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(digest as uint32[2], whether every element is finite) of one array.

    Each element's word is mixed with a key derived from its flat index in
    the global array (so moved or swapped elements change the sums too), and
    the mixed words are summed modulo 2^32: integer addition in any order, so
    the result does not depend on the sharding. A replicated scalar result
    reads on every process.
    """
    w = _words(x)
    index = jnp.zeros(w.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(w.ndim)):
        iota = jax.lax.broadcasted_iota(jnp.uint32, w.shape, axis)
        index = index + iota * jnp.uint32(stride % 2**32)
        stride *= w.shape[axis]
    sums = [
        jnp.sum(_fmix32(w ^ _fmix32(index ^ jnp.uint32(seed))), dtype=jnp.uint32)
        for seed in _SEEDS
    ]
    finite = (
        jnp.all(jnp.isfinite(x))
        if jnp.issubdtype(x.dtype, jnp.inexact)
        else jnp.array(True)
    )
    return jnp.stack(sums), finite


# Every array of a tree checked in one program: one dispatch per tree, not
# one per array. Hundreds of small collective programs in flight at once can
# deadlock XLA's CPU client on a multi-device mesh (its per-device limit on
# in-flight executions blocks some devices' parts of one program while the
# others wait for them in an all-reduce).
def _check_arrays(arrays: list[jax.Array]) -> list:
    """`_check_array` of each array, in one program whose results are
    replicated over the arrays' mesh (so every process reads them)."""
    meshes = {getattr(x.sharding, "mesh", None) for x in arrays}
    out = None
    if len(meshes) == 1 and isinstance(next(iter(meshes)), jax.sharding.Mesh):
        out = jax.sharding.NamedSharding(next(iter(meshes)), P())
    return _check_program(out)(arrays)


@functools.cache
def _check_program(out_sharding):
    def check(arrays):
        return [_check_array(x) for x in arrays]

    if out_sharding is None:  # arrays on no one mesh: the compiler places them
        return jax.jit(check)
    return jax.jit(check, out_shardings=out_sharding)


def _has_digest(x: jax.Array) -> bool:
    """Whether an array's dtype has uint32 words (not complex, not sub-byte)."""
    try:
        jax.eval_shape(_check_array, jax.ShapeDtypeStruct(x.shape, x.dtype))
    except TypeError:  # no bitcast to uint32 words for this dtype
        return False
    return True


def _inspect(tree: Any) -> tuple[dict[str, dict], list[str]]:
    """({tree path: {"dtype", "shape", "digest"}}, paths of non-finite arrays).

    One program checks every array of the tree; only 9 bytes per array reach
    the host. An array of a dtype without a digest (complex, sub-byte) gets
    none and is not verified.
    """
    leaves = [
        (jax.tree_util.keystr(path), x if isinstance(x, jax.Array) else jnp.asarray(x))
        for path, x in jax.tree_util.tree_leaves_with_path(tree)
    ]
    checked = [(key, x) for key, x in leaves if _has_digest(x)]
    results = jax.device_get(_check_arrays([x for _, x in checked]))
    digests, nonfinite = {}, []
    for (key, x), ((a, b), finite) in zip(checked, results, strict=True):
        digests[key] = {
            "dtype": str(x.dtype),
            "shape": list(x.shape),
            "digest": f"{int(a):08x}{int(b):08x}",
        }
        if not finite:
            nonfinite.append(key)
    return digests, nonfinite


def _verify(params: Any, train: Any, saved: dict | None) -> str | None:
    """Why restored (params, train) are not intact, or None when they are.

    An array is compared with its saved digest when both exist with the same
    dtype and shape (a restore into another dtype casts, and is not damage).
    Non-finite floats are refused with or without digests.
    """
    differ, nonfinite = [], []
    for item, tree in (("params", params), ("train", train)):
        found, bad = _inspect(tree)
        nonfinite += [item + key for key in bad]
        recorded = (saved or {}).get(item) or {}
        for key, now in found.items():
            then = recorded.get(key)
            if (
                then is not None
                and (then["dtype"], then["shape"]) == (now["dtype"], now["shape"])
                and then["digest"] != now["digest"]
            ):
                differ.append(item + key)
    if differ:
        return f"{_count(differ)} differ from their saved digests ({_some(differ)})"
    if nonfinite:
        return f"non-finite values in {_count(nonfinite)} ({_some(nonfinite)})"
    return None


def _count(names: list[str]) -> str:
    return f"{len(names)} array" + ("s" if len(names) > 1 else "")


def _some(names: list[str], shown: int = 3) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


# ----------------------------------------------------------------- failures
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")  # tensorstore's errors


def _chain(e: BaseException) -> list[BaseException]:
    """`e` and the exceptions it was raised from, outermost first."""
    seen = [e]
    while (nxt := seen[-1].__cause__ or seen[-1].__context__) is not None:
        if nxt in seen:
            break
        seen.append(nxt)
    return seen


def _os_errno(e: BaseException) -> int | None:
    """The errno behind a failure: an OSError in its chain, or the OS error
    code tensorstore writes into its messages."""
    for x in _chain(e):
        if isinstance(x, OSError) and x.errno is not None:
            return x.errno
    for x in _chain(e):
        if m := _OS_ERROR_CODE.search(str(x)):
            return int(m.group(1))
    return None


def _brief(e: BaseException, limit: int = 300) -> str:
    """The innermost error of a chain in one line: it names the file or array
    (orbax's outer errors wrap tensorstore's and print whole specs)."""
    inner = _chain(e)[-1]
    text = " ".join(str(inner).strip().splitlines()[:1]) or type(inner).__name__
    text = f"{type(inner).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _say(line: str) -> None:
    """A console line, from process 0 only (every process decides alike)."""
    if jax.process_index() == 0:
        print(line, flush=True)


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
