"""symprop.runtime — NumPy plus compiled kernels: layers, models, losses, optimizers, data."""
