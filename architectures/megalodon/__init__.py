from architectures.megalodon.checkpoint import config_from_official, load_official
from architectures.megalodon.config import MegalodonConfig
from architectures.megalodon.model import Megalodon

__all__ = ["Megalodon", "MegalodonConfig", "config_from_official", "load_official"]
