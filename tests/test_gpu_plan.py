"""GPU plans: topologies such as 'h100:8', their shipped XLA target configs,
and FLOPs counted from compiled HLO (XLA:GPU has no cost analysis without a
device).

The default suite needs no CUDA plugin: topology strings, the target
config files, and the HLO FLOP count on CPU-compiled programs against hand
counts. Compiling for GPUs needs the plugin of the `[cuda]` extra (no GPU);
those tests are `slow` and skip without it.
"""

from __future__ import annotations

import importlib.resources
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax.planning import chips, hlo, report
from rlvr_jax.planning import compile as compile_lib

needs_cuda_plugin = pytest.mark.skipif(
    not chips.cuda_plugin_installed(),
    reason="needs the CUDA plugin (the [cuda] extra) to compile for GPUs",
)


# ------------------------------------------------------------ topologies
@pytest.mark.parametrize(
    "topology, want",
    [
        ("h100:8", ("h100", 1, 8)),
        ("a100:8", ("a100", 1, 8)),
        ("h200:8", ("h200", 1, 8)),
        ("h100:2x8", ("h100", 2, 8)),
        ("H100:4x8", ("h100", 4, 8)),
        ("a100:1", ("a100", 1, 1)),
    ],
)
def test_gpu_topologies_name_chip_nodes_and_gpus(topology, want):
    assert chips.is_gpu_topology(topology)
    assert chips.parse_gpu_topology(topology) == want


@pytest.mark.parametrize(
    "topology",
    ["h100", "h100:", "h100:16", "h100:0", "h100:0x8", "h100:2x2x8", "h100:x8"]
    + ["b200:8", "h100:8x", "h100:two"],
)
def test_bad_gpu_topologies_are_one_line_errors_naming_what_works(topology):
    with pytest.raises(ValueError) as e:
        chips.parse_gpu_topology(topology)
    message = str(e.value)
    assert "\n" not in message and "h100:8" in message and "h100:2x8" in message


def test_tpu_topologies_are_not_gpu_ones():
    assert not chips.is_gpu_topology("v5e:2x4")
    assert not chips.is_gpu_topology("v4:2x2x1")


def _cuda_plugin(monkeypatch, present: bool):
    """Makes the CUDA plugin look installed (or not) to `chips`."""
    monkeypatch.setattr(chips, "cuda_plugin_installed", lambda: present)


def test_without_the_cuda_plugin_a_gpu_topology_says_to_install_it(monkeypatch):
    _cuda_plugin(monkeypatch, present=False)
    with pytest.raises(ValueError, match=re.escape("pip install -e '.[cuda]'")):
        chips.gpu_topology_devices("h100:8")


def test_a_cuda_plugin_that_did_not_load_says_to_start_with_cpu(monkeypatch):
    """The plugin fails to load when it looks for a GPU and finds none; jax
    then has no cuda topology to describe (here: no plugin at all, which
    jax reports the same way)."""
    from jax.experimental import topologies

    _cuda_plugin(monkeypatch, present=True)

    def not_implemented(*args, **kwargs):
        raise NotImplementedError("topology not implemented for cuda")

    monkeypatch.setattr(topologies, "get_topology_desc", not_implemented)
    with pytest.raises(ValueError, match="JAX_PLATFORMS=cpu") as e:
        chips.gpu_topology_devices("h100:8")
    assert "\n" not in str(e.value)


# --------------------------------------------------------- target configs
def _text_proto(text: str) -> dict:
    """A text-format protobuf as nested dicts (scalars as strings), enough
    to read the target configs without their proto classes."""
    root, stack = {}, []
    current = root
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.endswith("{"):
            child = {}
            current[line[:-1].strip()] = child
            stack.append(current)
            current = child
        elif line == "}":
            current = stack.pop()
        else:
            key, value = (part.strip() for part in line.split(":", 1))
            current[key] = value.strip('"')
    assert not stack, "unbalanced braces"
    return root


@pytest.mark.parametrize("chip, major", [("a100", 8), ("h100", 9), ("h200", 9)])
def test_each_gpu_target_config_ships_and_matches_the_chip_table(chip, major):
    packaged = importlib.resources.files("rlvr_jax.planning") / "gpu_targets"
    text = (packaged / chips.GPU_TARGETS[chip]).read_text()
    assert text == chips.gpu_target_config(chip)
    config = _text_proto(text)
    info = config["gpu_device_info"]
    assert config["platform_name"] == "CUDA"
    assert int(info["cuda_compute_capability"]["major"]) == major
    assert int(info["core_count"]) > 100
    # The device string is what the compile-only devices report as their
    # kind: it must find this chip's figures.
    assert chips.chip_for(config["device_description_str"]) == chips.CHIPS[chip]
    figures = chips.CHIPS[chip]
    assert float(info["memory_bandwidth"]) == pytest.approx(
        figures.hbm_bytes_per_s, rel=0.01
    )
    assert float(info["device_memory_size"]) == pytest.approx(
        figures.hbm_bytes, rel=0.08
    )


def test_gpu_notes_say_what_is_not_modeled():
    one = report.gpu_notes(1, 8)
    two = report.gpu_notes(2, 8)
    assert any("no autotuning" in n for n in one)
    assert len(two) == len(one) + 1 and "2 nodes of 8" in two[-1]


# ------------------------------------------------------ FLOPs from the HLO
def _compiled(fn, *shapes):
    args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    return jax.jit(fn).lower(*args).compile()


def test_hlo_flops_count_matrix_products_by_hand():
    """2·M·N·K for a matmul; batch dims multiply; a convolution's window
    and input features are its contraction."""
    matmul = _compiled(lambda a, b: a @ b, (64, 128), (128, 32))
    assert hlo.flops(matmul.as_text()) == 2 * 64 * 128 * 32
    batched = _compiled(
        lambda a, b: jnp.einsum("bik,bkj->bij", a, b), (3, 8, 16), (3, 16, 4)
    )
    assert hlo.flops(batched.as_text()) == 2 * 3 * 8 * 4 * 16
    conv = _compiled(
        lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "VALID"),
        (2, 3, 10, 10),
        (5, 3, 3, 3),
    )
    # Output [2, 5, 8, 8], each a sum over 3 input features × a 3×3 window.
    assert hlo.flops(conv.as_text()) == 2 * (2 * 5 * 8 * 8) * (3 * 3 * 3)
    # XLA's own count agrees where it has one (CPU) and there are no loops.
    assert hlo.flops(conv.as_text()) == conv.cost_analysis()["flops"]


def test_hlo_flops_count_loops_by_their_trip_count():
    """A scan of 7 matmuls counts 7 (XLA's cost analysis counts its body
    once); a loop whose count depends on data counts once; a conditional
    its costliest branch."""

    def scan(x, w):
        return jax.lax.scan(lambda x, _: (jnp.tanh(x @ w), None), x, None, length=7)[0]

    looped = _compiled(scan, (16, 64), (64, 64))
    one = 2 * 16 * 64 * 64
    assert " while(" in looped.as_text()
    assert hlo.flops(looped.as_text()) == 7 * one
    assert looped.cost_analysis()["flops"] < 2 * one  # the body once

    def data_dependent(x, w):
        body = lambda c: (c[0] + 1, c[1] @ w)
        return jax.lax.while_loop(lambda c: c[0] < x[0, 0], body, (0.0, x))[1]

    loop = _compiled(data_dependent, (8, 8), (8, 8))
    assert hlo.flops(loop.as_text()) == 2 * 8 * 8 * 8

    branches = jax.jit(
        lambda p, a, b: jax.lax.cond(p, lambda: a @ b, lambda: (a @ b) @ b)
    ).lower(True, jnp.ones((4, 4)), jnp.ones((4, 4)))
    assert hlo.flops(branches.compile().as_text()) == 2 * (2 * 4 * 4 * 4)


# A cuBLAS GEMM as XLA:GPU writes it (shapes and attributes trimmed to what
# the count reads): [512, 4096] × [4096, 1024] in bf16, with a 32 MiB
# workspace as the output's second element.
_CUBLAS_HLO = """
ENTRY %main (p0: bf16[512,4096], p1: bf16[4096,1024]) -> bf16[512,1024] {
  %p0 = bf16[512,4096]{1,0} parameter(0)
  %p1 = bf16[4096,1024]{1,0} parameter(1)
  %gemm = (bf16[512,1024]{1,0}, s8[33554432]{0}) custom-call(%p0, %p1), custom_call_target="__cublas$gemm", backend_config={"gemm_backend_config":{"alpha_real":1,"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"],"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]}}}
  ROOT %out = bf16[512,1024]{1,0} get-tuple-element(%gemm), index=0
}
"""


def test_a_cublas_gemm_counts_its_product_and_not_its_workspace():
    assert hlo.flops(_CUBLAS_HLO) == 2 * 512 * 1024 * 4096
    want = 2 * (512 * 4096 + 4096 * 1024 + 512 * 1024)
    assert hlo.hbm_bytes(_CUBLAS_HLO) == want


def test_cost_counts_flops_from_the_hlo_when_the_compiler_has_no_analysis():
    """XLA:GPU without a device answers cost_analysis() with None."""
    compiled = _compiled(lambda a, b: a @ b, (64, 128), (128, 32))
    assert compile_lib.platform(compiled) == "cpu"
    flops, nbytes = compile_lib.cost(compiled)
    silent = types.SimpleNamespace(
        as_text=compiled.as_text,
        cost_analysis=lambda: None,
        input_shardings=compiled.input_shardings,
        output_shardings=compiled.output_shardings,
    )
    assert compile_lib.cost(silent) == (2 * 64 * 128 * 32, nbytes)
    assert flops == 2 * 64 * 128 * 32


# ------------------------------------------ compiled for GPUs (the plugin)
@pytest.mark.slow
@needs_cuda_plugin
@pytest.mark.parametrize("chip", sorted(chips.GPU_TARGETS))
def test_a_gpu_node_compiles_a_sharded_matmul_and_counts_it(chip):
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    devices = chips.topology_devices(f"{chip}:8")
    assert len(devices) == 8 and devices[0].platform == "gpu"
    assert chips.chip_for(devices[0].device_kind) == chips.CHIPS[chip]
    mesh = jax.sharding.Mesh(np.array(devices), ("x",))
    a = jax.ShapeDtypeStruct(
        (4096, 4096), jnp.bfloat16, sharding=NamedSharding(mesh, P("x", None))
    )
    b = jax.ShapeDtypeStruct((4096, 4096), jnp.bfloat16)
    compiled = jax.jit(lambda a, b: a @ b).lower(a, b).compile()
    assert compiled.cost_analysis() is None  # hence the HLO count
    m = compiled.memory_analysis()
    assert m.argument_size_in_bytes == 2 * (512 * 4096 + 4096 * 4096)
    flops, nbytes = compile_lib.cost(compiled)
    assert flops == 2 * 512 * 4096 * 4096  # this GPU's rows
    assert nbytes >= 2 * (512 * 4096 + 4096 * 4096 + 512 * 4096)


@pytest.mark.slow
@needs_cuda_plugin
def test_several_nodes_are_one_mesh_of_all_their_gpus():
    devices = chips.topology_devices("h100:2x8")
    assert len(devices) == 16
    assert sorted({d.process_index for d in devices}) == [0, 1]


@pytest.mark.slow  # ~1 min: the tiny run's programs compiled for 8 GPUs
@needs_cuda_plugin
def test_a_tiny_run_plans_on_a_gpu_node():
    from rlvr_jax import plan as plan_lib
    from tests.test_plan import MODEL, tiny_config

    p = plan_lib.plan(
        tiny_config(**{"train.micro_batch_size": 8}),
        "h100:8",
        model=MODEL,
        eval_examples=8,
        search=False,
        costs=False,
    )
    assert p.platform == "gpu" and p.chips == 8 and p.chip.name == "h100"
    assert p.fits
    text = report.format_plan(p)
    assert text.startswith("plan for h100:8: 8 × h100 GPU (")
    assert "per GPU" in text.splitlines()[0]
    assert "note: GPU:" in text
    assert p.to_json()["platform"] == "gpu"


@pytest.mark.slow  # ~1 min: unrolled cost programs for 8 GPUs
@needs_cuda_plugin
def test_gpu_train_step_flops_agree_with_the_analytic_count():
    """As on TPU (tests/test_plan.py): per token 6·N for the forward and
    backward, 2·N more for the remat forward of the layers and the
    checkpointed head, and attention's two [T, T] products in each of those
    four passes; every micro-batch and layer counted, here from the HLO."""
    from rlvr_jax import build
    from rlvr_jax.planning import programs
    from tests.test_plan import MODEL, tiny_config

    # Short rows, 32 responses in four micro-batches of 8 (one per GPU).
    config = tiny_config(
        **{"data.prompt_buckets": (8,), "data.max_prompt_len": 8},
        **{"rollout.max_new_tokens": 120, "eval.max_new_tokens": 120},
        **{"train.batch_size": 4, "rollout.n": 8, "rollout.chunk_size": 32},
        **{"train.micro_batch_size": 8, "model.attention": "xla"},
    )
    t = 8 + 120
    run = build.plan_run(config, chips.topology_devices("h100:8"), 8, MODEL)
    sh = run.shapes
    assert sh.learner_width == t and sh.responses // sh.micro_batch == 4
    flops, _, _ = programs.train_step_cost(run)
    m = MODEL
    d, f = m.d_model, m.mlp_dim
    nh, kh = m.n_heads * m.head_dim, m.n_kv_heads * m.head_dim
    layers = m.n_layers * (d * (nh + 2 * kh) + nh * d + 3 * d * f)
    head = m.vocab_size * d
    attention = 4 * t * m.n_heads * m.head_dim * m.n_layers
    tokens = sh.responses * t / run.mesh.size
    want = tokens * (8 * layers + 8 * head + 4 * attention)
    assert flops == pytest.approx(want, rel=0.10)
