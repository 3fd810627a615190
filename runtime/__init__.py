"""symprop.runtime — NumPy plus compiled kernels: layers, models, losses, optimizers, data."""
from .openmp import bound_spin

bound_spin()   # before any generated module loads libgomp
