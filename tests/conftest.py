"""Shared test configuration.

* Silent broadcasting between arrays of different ranks is an error
  (`jax_numpy_rank_promotion="raise"`).
* The `dtype` fixture runs a test twice: in float32 (JAX's default) and in float64 (inside
  `jax.enable_x64(True)`), so every mathematical check is also made at double precision,
  with the tighter tolerances of `tol`.
* `jsolve` is ONE `equinox.filter_jit`-wrapped `gf.solve` shared by the whole suite: a
  configuration (shapes, dtype, method, static options) compiles once and every later test
  that uses the same configuration reuses it. Methods whose optimiser is built from Python
  closures (`optax.sgd(lr)`) must therefore be built once at module level to share the cache.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from helpers import JSOLVE

jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_configure(config):
    # KNOWN LIBRARY BUG (see test_dynamics.py::test_gradient_emits_no_deprecation_warning,
    # a strict xfail): gradflow._dynamics.gradient calls the deprecated `optax.global_norm`,
    # whose DeprecationWarning -- an error under `filterwarnings = ["error"]` -- would fail
    # every solve in the suite. Ignore exactly that message until the library is fixed;
    # then this line is a no-op and the xfail turns into an XPASS (remove both).
    config.addinivalue_line(
        "filterwarnings", "ignore:optax.global_norm is deprecated:DeprecationWarning"
    )


@pytest.fixture(scope="session")
def jsolve():
    """`gf.solve` under `equinox.filter_jit`, shared by all tests (one compilation cache)."""
    return JSOLVE


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    """Run the test in float32, then again in float64 (`jax.enable_x64`)."""
    x64 = request.param == "float64"
    with jax.enable_x64(x64):
        dt = jnp.float64 if x64 else jnp.float32
        # Guard the mode itself: default float arrays really have this dtype.
        assert jnp.asarray(1.0).dtype == dt
        assert jnp.zeros(2).dtype == dt
        yield dt
