"""Time per epoch of the CIFAR-style CNN on synthetic data, on 1 process and under
``mpiexec -n P`` (each rank on one OpenMP thread, so P ranks use P cores), and the Allreduce
time per step. Run: ``mpiexec --allow-run-as-root --oversubscribe -n 2 -x OMP_NUM_THREADS=1
python benchmarks/mpi_scaling.py`` (and with -n 1)."""
import time

import numpy as np

from symprop import optimizers as O
from symprop.runtime.distributed import Distributed
from symprop.runtime.named_models import cifar_cnn


def main(n=1024, batch=64, epochs=2):
    dist = Distributed()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, n)
    model = cifar_cnn((3, 32, 32), dtype="float32", seed=0)
    model.fit(X[:batch * dist.size], y[:batch * dist.size], epochs=1, batch_size=batch, verbose=0,
              optimizer=O.SGD(0.01, momentum=0.9), distributed=dist)        # warm-up
    dist.comm_time, dist.comm_calls = 0.0, 0
    t0 = time.perf_counter()
    model.fit(X, y, epochs=epochs, batch_size=batch, verbose=0, optimizer=O.SGD(0.01, momentum=0.9),
              distributed=dist)
    per_epoch = (time.perf_counter() - t0) / epochs
    if dist.rank == 0:
        steps = max(dist.comm_calls, 1)
        P = sum(p.size for p in model.parameters())
        print(f"ranks {dist.size}: {per_epoch:.2f} s/epoch ({n} samples, batch {batch}); Allreduce "
              f"{1e3 * dist.comm_time / steps:.2f} ms/step over {dist.comm_calls} steps "
              f"({P:,} parameters, {4 * P * 2 * (dist.size - 1) / max(dist.size, 1) / 2**20:.2f} MiB per step in a ring)")


if __name__ == "__main__":
    main()
