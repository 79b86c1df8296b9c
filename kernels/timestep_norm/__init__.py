from kernels.timestep_norm.op import timestep_norm
from kernels.timestep_norm.reference import initial_state, timestep_norm_reference

__all__ = ["initial_state", "timestep_norm", "timestep_norm_reference"]
