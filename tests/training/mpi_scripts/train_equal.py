"""Train the same small CNN on one process and on P ranks (argv: optimizer, output, distributed).
Optimizer "sgd_aug": SGD with augmentation, metrics and a callback on the last rank alone that
stops training after epoch 2 (every rank must stop with it)."""
import sys, numpy as np
from symprop import Sequential, layers as L, optimizers as O
def model():
    return Sequential([L.Conv2D(1, 3, 3, padding=1), L.Tanh(), L.MaxPool2D(2), L.Flatten(), L.Dense(12, 3)],
                      dtype="float64", seed=0, input_shape=(1, 4, 4))
rng = np.random.default_rng(0)
X, y = rng.normal(size=(23, 1, 4, 4)), rng.integers(0, 3, 23)
opt = sys.argv[1]; out = sys.argv[2]; dist = sys.argv[3] == "1"
m = model()
o = O.SGD(0.1, momentum=0.9) if opt.startswith("sgd") else O.AdaHessian(lr=0.05, seed=3)
from mpi4py import MPI
from symprop.callbacks import LambdaCallback
rank, size = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size() if dist else 1
kw = {}
if opt == "sgd_aug":
    stop = LambdaCallback(on_epoch_end=lambda e, logs: setattr(m, "stop_training", e == 2 and rank == size - 1))
    kw = dict(augment="shift,rotate", metrics=["f1", "confusion_matrix"], callbacks=[stop])
h = m.fit(X, y, epochs=3, batch_size=8, optimizer=o, verbose=0, distributed=dist, validation_data=(X[:7], y[:7]),
          **kw)
extra = {"f1": np.array(h["f1"]), "val_f1": np.array(h["val_f1"]), "cm": np.array(h["confusion_matrix"]),
         "stopped": np.array(h["stopped_epoch"])} if kw else {}
if rank == 0 or not dist:
    np.savez(out, *m.parameters(), loss=np.array(h["loss"]), val=np.array(h["val_loss"]), acc=np.array(h["accuracy"]),
             **extra)
elif dist:
    np.savez(out + ".r1", *m.parameters())
