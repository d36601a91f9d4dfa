from setuptools import find_packages, setup

CORE = [
    "jax>=0.7",
    "flax>=0.12",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.11",
    "grain>=0.2.12",
    "ml_collections>=1.0",
    "numpy>=1.26",
    "scipy>=1.11",
    "safetensors>=0.4",
    "tokenizers>=0.20",
    "pillow>=10",
    "matplotlib>=3.8",
    "tqdm>=4.66",
    "tensorboardX>=2.6",
    "array_record>=0.5",
]

setup(
    name="progress_jax",
    version="0.1.0",
    description="ProgressLM in JAX/Flax: progress reasoning with Qwen2.5-VL, LoRA SFT and GRPO.",
    packages=find_packages(include=["progress_jax*", "data_pipeline*", "data_construction*"]),
    package_data={"data_pipeline": ["assets/*.json"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require={
        "cuda": ["jax[cuda12]"],
        # diffusers, gradio and playwright: the data-construction tests run a tiny diffusers pipeline and click
        # through the review app in headless Chromium (Debian's chromium package, installed by .ci/run).
        "test": ["pytest>=8", "pytest-xdist>=3.5", "torch==2.13.0", "transformers>=4.50", "peft>=0.13", "diffusers>=0.35", "gradio>=5", "playwright>=1.40"],
        "tools": ["vllm", "diffusers", "gradio"],
    },
)
