from setuptools import find_packages, setup

setup(
    name="espnet2_speechlm",
    version="0.1.0",
    description="Unified speech-text language models (OpusLM family): recipes, training, decoding, scoring",
    packages=find_packages(include=["espnet2_speechlm", "espnet2_speechlm.*"]),
    python_requires=">=3.10",
    # The pinned set lives in tools/requirements.txt + tools/constraints.txt
    # (`make install`); these are the core's own imports.
    install_requires=["torch", "numpy", "pyyaml", "transformers>=5", "safetensors", "kaldiio", "soundfile", "tqdm"],
)
