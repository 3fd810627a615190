"""The optimizer defaults, the built-in models' training recipes and fit's divergence bound, in a module without
compiled kernels so the CLI can read them."""

#: The one table of optimizer defaults: the keyword defaults of the classes in
#: :mod:`symprop.runtime.optimizers`, ``fit(optimizer="name")`` and ``symprop train --optimizer
#: name`` all read it, so a name means the same optimizer everywhere. SGD's default momentum is
#: 0.9 (``torch.optim.SGD``'s is 0: pass ``momentum=0`` for plain SGD): plain SGD trained the
#: digits CNN worse (15 epochs, seed 0: lr 0.1 97.5 % test accuracy, momentum 0.9 at lr 0.05 98.6 %).
DEFAULTS = {
    "sgd": {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
    "nesterov": {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
    "adagrad": {"lr": 0.01, "eps": 1e-10, "weight_decay": 0.0, "lr_decay": 0.0},
    "rmsprop": {"lr": 0.01, "alpha": 0.99, "eps": 1e-8, "momentum": 0.0, "weight_decay": 0.0},
    "adam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
    "adamw": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01},
    "adahessian": {"lr": 0.15, "betas": (0.9, 0.999), "eps": 1e-4, "weight_decay": 0.0, "update_each": 1,
                   "reuse_trust": 2.0},
    "newton": {"lr": 1.0, "damping": 1.0},
}

#: What ``symprop train --model NAME`` adds to the optimizer's defaults: the model's epochs and
#: its weight decay (the conv models reach 98 % on digits with 5e-4 and 97.8 % without; AdamW
#: keeps its own decoupled default). From Python: ``fit(epochs=15, optimizer=O.SGD(weight_decay=5e-4))``.
MODEL_RECIPES = {
    "mlp": {"epochs": 40, "weight_decay": 0.0},
    "cnn": {"epochs": 15, "weight_decay": 5e-4},
    "lenet": {"epochs": 15, "weight_decay": 5e-4},
    "cifar_cnn": {"epochs": 15, "weight_decay": 5e-4},
}

#: ``fit``'s default divergence bound: training stops when a batch's loss exceeds this multiple
#: of the larger of the call's first batch loss and an uninformed predictor's loss on that
#: batch (zero outputs: ln K for softmax cross-entropy, mean y² for MSE), so a trained model
#: being fine-tuned from a tiny loss is not stopped by ordinary batches; normal training never
#: comes near the bound, SGD(1e6) on the digits MLP passes it in its first steps
DIVERGENCE_FACTOR = 1e4
