"""Shared test configuration.

* Silent broadcasting between arrays of different ranks is an error
  (`jax_numpy_rank_promotion="raise"`).
* The `dtype` fixture runs a test twice: in float32 (JAX's default) and in float64 (inside
  `jax.enable_x64(True)`), so every mathematical check is also made at double precision,
  with the tighter tolerances of `tol`.
* Compilation dominates the suite's run time: tests go through the canonical, jitted
  `helpers.flow` / `helpers.sgd` so each (policy type, shape, dtype) compiles once. Build
  methods whose optimiser is a Python closure (`optax.sgd(lr)`) once at module level, or
  inside a jitted function with the learning rate as an argument.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# One XLA compilation cache for the whole run, shared by the xdist workers and the
# subprocesses that tests start (they inherit the environment): a program compiled by one
# process is loaded, not compiled again, by the others. Set before JAX is imported.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="gradflow-tests-xla-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The suite's programs are compiled once and run for milliseconds: LLVM's optimisation of
# the CPU code costs more than it saves (-11% CPU time on test_flow_exact.py). Results are
# compared with closed forms to tolerances, and bit for bit only within one run.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                               " --xla_llvm_disable_expensive_passes=true").strip()
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


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


# Every figure saved through gradflow._util.results.save_figure is checked for layout problems
# (overlapping or clipped text, legends or insets over data); the study tests assert none.
def _register_figure_check():
    import figcheck

    from gradflow._util import results as _results

    if figcheck.record not in _results.FIGURE_HOOKS:
        _results.FIGURE_HOOKS.append(figcheck.record)


_register_figure_check()


# The test files run whole on the xdist workers (`--dist loadfile`), in collection order:
# the longest ones (compilation of whole studies) go first, so that the workers finish
# together instead of one running a long file alone at the end.
LONGEST_FIRST = ("test_studies.py", "test_design_proxy.py", "test_policies.py", "test_flow_exact.py",
                 "test_sensitivity.py", "test_design.py", "test_rm_metrics.py", "test_analysis.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file is kept
