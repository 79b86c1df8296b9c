"""Building blocks shared by the architectures (norms, rotary embeddings, MLPs, attention, state)."""

from architectures.common.attention import CausalSelfAttention, KVCache, causal_window_mask
from architectures.common.checkpointing import run_layer
from architectures.common.mlp import SwiGLU
from architectures.common.norms import RMSNorm
from architectures.common.rotary import RotaryEmbedding, apply_rotary
from architectures.common.state import clone_state, detach_state, from_serializable, map_state, to_serializable

__all__ = [
    "CausalSelfAttention",
    "KVCache",
    "causal_window_mask",
    "RMSNorm",
    "RotaryEmbedding",
    "SwiGLU",
    "apply_rotary",
    "clone_state",
    "detach_state",
    "from_serializable",
    "map_state",
    "run_layer",
    "to_serializable",
]
