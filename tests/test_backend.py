"""The CPU-tuned kernels of `gradflow._engine.ops` are switched by backend: written-out sums on
CPU, the usual reductions elsewhere, with the same values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow._engine import ops as _ops


def _ops_on(x, idx, draws):
    return (_ops.sum_outputs(x), _ops.max_outputs(x), _ops.cumsum_outputs(x), _ops.take_outputs(x, idx),
            _ops.sum_draws(draws), _ops.softmax_outputs(x)[1])


def _primitives(fn, *args) -> set[str]:
    return {eqn.primitive.name for eqn in jax.make_jaxpr(fn)(*args).eqns}


@pytest.mark.parametrize("backend, reduces", [("cpu", False), ("gpu", True), ("tpu", True)])
def test_kernels_switch_by_backend_with_the_same_values(monkeypatch, backend, reduces):
    key = jax.random.key(0)
    x = jax.random.normal(key, (3, 7))
    idx = jax.random.randint(jax.random.fold_in(key, 1), (3, 4), 0, 7)
    draws = jax.random.normal(jax.random.fold_in(key, 2), (3, 5, 2))
    expect = (x.sum(-1, keepdims=True), x.max(-1, keepdims=True), jnp.cumsum(x, -1),
              jnp.take_along_axis(x, idx, -1), draws.sum(1, keepdims=True), jax.nn.log_softmax(x))
    monkeypatch.setattr(_ops.jax, "default_backend", lambda: backend)
    assert _ops.unrolled(7) == (not reduces) and not _ops.unrolled(17)
    got = _ops_on(x, idx, draws)
    for g, e in zip(got, expect, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-6, atol=1e-6)
    prims = _primitives(lambda a: _ops.sum_outputs(a), x)
    assert ("reduce_sum" in prims) == reduces
