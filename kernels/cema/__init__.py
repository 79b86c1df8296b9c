from kernels.cema.op import cema, cema_step, cema_step_coefficients
from kernels.cema.reference import cema_coefficients, cema_reference, cema_step_reference

__all__ = ["cema", "cema_coefficients", "cema_reference", "cema_step", "cema_step_coefficients", "cema_step_reference"]
