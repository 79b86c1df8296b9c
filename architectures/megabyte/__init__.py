from architectures.megabyte.config import MegabyteConfig
from architectures.megabyte.model import Megabyte

__all__ = ["Megabyte", "MegabyteConfig"]
