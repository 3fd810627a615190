"""Train the same small CNN on one process and on P ranks (argv: optimizer, output, distributed)."""
import sys, numpy as np
from symprop import Sequential, layers as L, optimizers as O
def model():
    return Sequential([L.Conv2D(1, 3, 3, padding=1), L.Tanh(), L.MaxPool2D(2), L.Flatten(), L.Dense(12, 3)],
                      dtype="float64", seed=0, input_shape=(1, 4, 4))
rng = np.random.default_rng(0)
X, y = rng.normal(size=(23, 1, 4, 4)), rng.integers(0, 3, 23)
opt = sys.argv[1]; out = sys.argv[2]; dist = sys.argv[3] == "1"
m = model()
o = O.SGD(0.1, momentum=0.9) if opt == "sgd" else O.AdaHessian(lr=0.05, seed=3)
h = m.fit(X, y, epochs=3, batch_size=8, optimizer=o, verbose=0, distributed=dist, validation_data=(X[:7], y[:7]))
from mpi4py import MPI
if MPI.COMM_WORLD.Get_rank() == 0 or not dist:
    np.savez(out, *m.parameters(), loss=np.array(h["loss"]), val=np.array(h["val_loss"]), acc=np.array(h["accuracy"]))
elif dist:
    np.savez(out + ".r1", *m.parameters())
