from .config import LossWeights, ModelConfig
from .speechlm import MultiStreamLM

__all__ = ["LossWeights", "ModelConfig", "MultiStreamLM"]
