from architectures.fot.config import FoTConfig
from architectures.fot.model import FocusedTransformer

__all__ = ["FoTConfig", "FocusedTransformer"]
