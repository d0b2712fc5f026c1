"""Helpers shared by the test modules (imported as `helpers`; pytest puts `tests/` on
`sys.path` because the folder has no `__init__.py`)."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np

import gradflow as gf

# ONE jitted `gf.solve` for the whole suite (see conftest.py).
JSOLVE = eqx.filter_jit(gf.solve)


def tol(dtype, f32: float, f64: float) -> float:
    """The tolerance for the given dtype."""
    return f64 if dtype == jnp.float64 else f32


def softmax(x):
    """A NumPy softmax over the last axis (an oracle independent of JAX)."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


REF_TRUE = (1.0, 0.8, -1.0, -1.0, -1.0)
REF_PROXY = (1.0, -1.0, -1.0, -1.0, -1.0)


def reference_probs(p_star: float = 0.10):
    """The reference ("stalling") problem of DESIGN.md: y* gets `p_star`, the mediocre
    output 0.5, the three bad outputs share the rest equally."""
    rest = (0.5 - p_star) / 3
    return (p_star, 0.5, rest, rest, rest)


FLOW_F32 = gf.GradientFlow()
FLOW_F64 = gf.GradientFlow(rtol=1e-10, atol=1e-12)


def flow_method(dtype) -> gf.GradientFlow:
    """The exact flow with tolerances fit for the dtype (tight ones in float64)."""
    return FLOW_F64 if dtype == jnp.float64 else FLOW_F32
