"""Rank 1 fails or differs (argv: mode): it raises inside fit (a bad batch only it sees), exits
before fit, or has other data values, labels or seeds; every rank must exit non-zero, not hang."""
import sys
import numpy as np
from mpi4py import MPI
from symprop import Sequential, layers as L

rank = MPI.COMM_WORLD.Get_rank()
mode = sys.argv[1]
m = Sequential([L.Dense(4, 3)], dtype="float64", seed=1 if mode == "seed" and rank == 1 else 0)
rng = np.random.default_rng(0)
X, y = rng.normal(size=(16, 4)), rng.integers(0, 3, 16)
if mode == "exit" and rank == 1:
    sys.exit(0)                                # never reaches fit: rank 0 must not wait forever
if mode == "values" and rank == 1:
    X[3, 2] += 1e-9                            # same shapes, other values
if mode == "labels" and rank == 1:
    y[5] = (y[5] + 1) % 3
if mode == "mismatch" and rank == 1:
    X, y = X[:12], y[:12]                      # different data on rank 1: detected at the start
if mode == "raise" and rank == 1:
    X[9, 0] = np.inf                         # only rank 1's data is bad
m.fit(X, y, epochs=2, batch_size=8, verbose=0, distributed=True)
print("finished", rank, flush=True)
