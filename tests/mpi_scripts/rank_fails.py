"""Rank 1 raises inside fit (a bad batch only it sees); every rank must exit non-zero, not hang."""
import sys
import numpy as np
from mpi4py import MPI
from symprop import Sequential, layers as L

rank = MPI.COMM_WORLD.Get_rank()
mode = sys.argv[1]
m = Sequential([L.Dense(4, 3)], dtype="float64", seed=0)
rng = np.random.default_rng(0)
X, y = rng.normal(size=(16, 4)), rng.integers(0, 3, 16)
if mode == "mismatch" and rank == 1:
    X, y = X[:12], y[:12]                      # different data on rank 1: detected at the start
if mode == "raise" and rank == 1:
    X[9, 0] = np.inf                         # only rank 1's data is bad
m.fit(X, y, epochs=2, batch_size=8, verbose=0, distributed=True)
print("finished", rank, flush=True)
