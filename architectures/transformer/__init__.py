from architectures.transformer.config import TransformerConfig
from architectures.transformer.model import Transformer

__all__ = ["Transformer", "TransformerConfig"]
