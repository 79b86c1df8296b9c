from kernels.cema.op import cema, cema_step
from kernels.cema.reference import cema_coefficients, cema_reference

__all__ = ["cema", "cema_coefficients", "cema_reference", "cema_step"]
