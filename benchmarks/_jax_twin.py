"""A JAX twin of a symprop ``Sequential`` for the benchmarks: the same layers as pure
functions of a parameter list aligned with ``model.parameters()`` (same weights), NCHW images
(``jax.lax.conv_general_dilated`` with OIHW kernels), and jitted SGD / Adam / AdaHessian steps,
forward and gradient + exact HVP (``jax.jvp`` of ``jax.grad``).

JAX is optional: :func:`available` says whether it imports. XLA's CPU thread count is set by
:func:`configure` before the first ``import jax`` (XLA reads ``XLA_FLAGS`` once).
"""
from __future__ import annotations

import os

import numpy as np


def configure(threads: int) -> str:
    """Set XLA's CPU threading for ``threads`` threads (must run before jax is imported);
    returns the flags used. ``--xla_cpu_multi_thread_eigen`` switches Eigen's thread pool (the
    matmul/conv path) and ``intra_op_parallelism_threads`` its size."""
    flags = (f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} "
             f"intra_op_parallelism_threads={threads}")
    old = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = (old + " " + flags).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    return os.environ["XLA_FLAGS"]


def available() -> bool:
    try:
        import jax  # noqa: F401
        return True
    except ImportError:
        return False


def _layer_fns(model):
    """Per layer: (number of parameters it takes, f(params, x) -> y)."""
    import jax
    import jax.numpy as jnp
    from symprop import layers as L

    lax = jax.lax
    acts = {"tanh": jnp.tanh, "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "softplus": jax.nn.softplus}
    fns = []
    for la in model.layers:
        if isinstance(la, L.Dense):
            if la.bias:
                fns.append((2, lambda p, x: x @ p[0].T + p[1]))
            else:
                fns.append((1, lambda p, x: x @ p[0].T))
        elif isinstance(la, L.Conv2D):
            def conv(p, x, la=la):
                y = lax.conv_general_dilated(x, p[0], window_strides=la.stride,
                                             padding=[(la.padding[0],) * 2, (la.padding[1],) * 2],
                                             rhs_dilation=la.dilation,
                                             dimension_numbers=("NCHW", "OIHW", "NCHW"))
                return y + p[1][None, :, None, None] if la.bias else y
            fns.append((2 if la.bias else 1, conv))
        elif isinstance(la, (L.MaxPool2D, L.AvgPool2D)):
            k, s, pd = la.kernel_size, la.stride, la.padding
            pads = ((0, 0), (0, 0), (pd[0], pd[0]), (pd[1], pd[1]))
            if isinstance(la, L.MaxPool2D):
                fns.append((0, lambda p, x, k=k, s=s, pads=pads: lax.reduce_window(
                    x, -jnp.inf, lax.max, (1, 1) + k, (1, 1) + s, pads)))
            else:
                fns.append((0, lambda p, x, k=k, s=s, pads=pads: lax.reduce_window(
                    x, 0.0, lax.add, (1, 1) + k, (1, 1) + s, pads) / (k[0] * k[1])))
        elif isinstance(la, L.Flatten):
            fns.append((0, lambda p, x: x.reshape(x.shape[0], -1)))
        elif isinstance(la, (L.BatchNorm1D, L.BatchNorm2D)):
            axes = (0,) if isinstance(la, L.BatchNorm1D) else (0, 2, 3)

            def bn(p, x, la=la, axes=axes):   # train mode: batch statistics (running ones not tracked)
                mean = x.mean(axis=axes, keepdims=True)
                var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
                shape = (1, -1) + (1,) * (x.ndim - 2)
                return (x - mean) * lax.rsqrt(var + la.eps) * p[0].reshape(shape) + p[1].reshape(shape)
            fns.append((2, bn))
        elif getattr(la, "kernel_name", None) in acts:
            f = acts[la.kernel_name]
            fns.append((0, lambda p, x, f=f: f(x)))
        else:
            raise ValueError(f"jax twin: no JAX version of layer {la.name}")
    return fns


class JaxTwin:
    """Jitted functions of the network; ``params`` is a list of jax arrays (the model's)."""

    def __init__(self, model):
        import jax
        import jax.numpy as jnp

        fns = _layer_fns(model)
        self.params = [jnp.asarray(p) for p in model.parameters()]

        def forward(params, x):
            i = 0
            for n, f in fns:
                x = f(params[i:i + n], x)
                i += n
            return x

        def loss(params, x, y):
            z = forward(params, x)
            return jnp.mean(jax.nn.logsumexp(z, axis=1) - jnp.take_along_axis(z, y[:, None], axis=1)[:, 0])

        self.forward = jax.jit(forward)
        vg = jax.value_and_grad(loss)

        def sgd(params, mom, x, y, lr=0.01, mu=0.9):
            l, g = vg(params, x, y)
            mom = [mu * m + gi for m, gi in zip(mom, g)]
            return [p - lr * m for p, m in zip(params, mom)], mom, l

        def adam_update(params, g, m, s, t, lr, b1=0.9, b2=0.999, eps=1e-8):
            m = [b1 * a + (1 - b1) * gi for a, gi in zip(m, g)]
            s = [b2 * a + (1 - b2) * gi * gi for a, gi in zip(s, g)]
            bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
            params = [p - lr / bc1 * a / (jnp.sqrt(b / bc2) + eps) for p, a, b in zip(params, m, s)]
            return params, m, s

        def adam(params, m, s, t, x, y, lr=1e-4):
            l, g = vg(params, x, y)
            params, m, s = adam_update(params, g, m, s, t, lr)
            return params, m, s, l

        def grad_hvp(params, v, x, y):
            (l, g), (_, hv) = jax.jvp(lambda p: vg(p, x, y), (params,), (v,))
            return l, g, hv

        def adahessian(params, m, s, t, key, x, y, lr=1e-3, b1=0.9, b2=0.999, eps=1e-4):
            keys = jax.random.split(key, len(params))
            v = [jax.random.rademacher(k, p.shape, p.dtype) for k, p in zip(keys, params)]
            (l, g), (_, hv) = jax.jvp(lambda p: vg(p, x, y), (params,), (v,))
            D = []
            for hi, vi in zip(hv, v):
                d = jnp.abs(hi * vi)
                if d.ndim == 4:   # spatial averaging over conv kernels (Yao et al.)
                    d = jnp.broadcast_to(d.mean(axis=(2, 3), keepdims=True), d.shape)
                D.append(d)
            m = [b1 * a + (1 - b1) * gi for a, gi in zip(m, g)]
            s = [b2 * a + (1 - b2) * d * d for a, d in zip(s, D)]
            bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
            params = [p - lr / bc1 * a / (jnp.sqrt(b / bc2) + eps) for p, a, b in zip(params, m, s)]
            return params, m, s, l

        self.sgd = jax.jit(sgd, donate_argnums=(0, 1))
        self.adam = jax.jit(adam, donate_argnums=(0, 1, 2))
        self.grad_hvp = jax.jit(grad_hvp)
        self.adahessian = jax.jit(adahessian, donate_argnums=(0, 1, 2))

    def callables(self, X, y, v):
        """Zero-argument callables timing forward, SGD step, grad+HVP, Adam step and AdaHessian
        step (each blocks until its results are ready); the state they update lives here."""
        import jax
        import jax.numpy as jnp

        Xj, yj = jnp.asarray(X), jnp.asarray(np.asarray(y, np.int32))
        vj = [jnp.asarray(a) for a in v]
        zeros = lambda: [jnp.zeros_like(p) for p in self.params]  # noqa: E731
        copy = lambda: [jnp.array(p, copy=True) for p in self.params]  # noqa: E731 (steps donate theirs)
        st = {"sgd": (copy(), zeros()), "adam": (copy(), zeros(), zeros(), 0),
              "ada": (copy(), zeros(), zeros(), 0), "key": jax.random.PRNGKey(0)}

        def fwd():
            self.forward(self.params, Xj).block_until_ready()

        def sgd():
            p, m = st["sgd"]
            p, m, l = self.sgd(p, m, Xj, yj)
            l.block_until_ready()
            st["sgd"] = (p, m)

        def hvp():
            l, g, hv = self.grad_hvp(self.params, vj, Xj, yj)
            jax.block_until_ready((l, g, hv))

        def adam():
            p, m, s, t = st["adam"]
            p, m, s, l = self.adam(p, m, s, t + 1, Xj, yj)
            jax.block_until_ready(p)
            st["adam"] = (p, m, s, t + 1)

        def ada():
            p, m, s, t = st["ada"]
            st["key"], k = jax.random.split(st["key"])
            p, m, s, l = self.adahessian(p, m, s, t + 1, k, Xj, yj)
            jax.block_until_ready(p)
            st["ada"] = (p, m, s, t + 1)

        return {"forward": fwd, "sgd step": sgd, "grad+hvp": hvp, "adam step": adam, "adahessian step": ada}
