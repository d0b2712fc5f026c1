"""Helpers shared by the test modules (imported as `helpers`: pytest puts `tests/` on
`sys.path` because the folder has no `__init__.py`).

Compilation dominates the cost of this suite (a flow compiles in seconds, then runs in
milliseconds), so tests go through a few *canonical* calls whose static configuration is
fixed: `flow(...)` and `sgd(...)`. Everything that varies between tests (policies, rewards,
`t1`, learning rates, temperature, prompt weights) is passed as arrays, so each
(policy type, shape, dtype) compiles once for the whole suite.
"""

from __future__ import annotations

import contextlib
import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradflow as gf

# ONE jitted `gf.solve` for the whole suite.
JSOLVE = eqx.filter_jit(gf.solve)

FLOW_F32 = gf.GradientFlow()
FLOW_F64 = gf.GradientFlow(rtol=1e-10, atol=1e-12)

N_SAVE = 41

REF_TRUE = (1.0, 0.8, -1.0, -1.0, -1.0)
REF_PROXY = (1.0, -1.0, -1.0, -1.0, -1.0)


def dtype_of(policy):
    return policy.weights.dtype


def tol(dtype, f32: float, f64: float) -> float:
    """The tolerance for the given dtype."""
    return f64 if dtype == jnp.float64 else f32


def flow_method(dtype) -> gf.GradientFlow:
    """The exact flow with tolerances fit for the dtype (tight ones in float64)."""
    return FLOW_F64 if dtype == jnp.float64 else FLOW_F32


def flow(policy, reward, true_reward=None, *, t1, method=None, ts=None, targets=(),
         normalized_targets=False):
    """The canonical flow: records (with probabilities) at `N_SAVE` evenly spaced times,
    or at the `ts` given (length `N_SAVE`). `targets` are static (a new tuple compiles)."""
    dt = dtype_of(policy)
    reward = jnp.asarray(reward, dt)
    true_reward = reward if true_reward is None else jnp.asarray(true_reward, dt)
    ts = jnp.linspace(0.0, t1, N_SAVE, dtype=dt) if ts is None else jnp.asarray(ts, dt)
    saveat = gf.SaveAt(ts=ts, probs=True)
    return JSOLVE(
        policy, reward=reward, true_reward=true_reward,
        method=flow_method(dt) if method is None else method, t1=jnp.asarray(t1, dt),
        saveat=saveat, targets=tuple(targets), normalized_targets=normalized_targets,
    )


@functools.partial(jax.jit, static_argnames=("steps", "every", "targets"))
def _sgd(policy, reward, true_reward, lr, reg, steps, every, targets):
    reg = gf.Regularization() if reg is None else reg
    method = gf.GradientAscent(optax.sgd(lr), steps, regularization=reg)
    return gf.solve(
        policy, reward=reward, true_reward=true_reward, method=method,
        saveat=gf.SaveAt(every=every, probs=True), targets=targets,
    )


def sgd(policy, reward, true_reward=None, *, lr, steps, every=1, targets=(), reg=None):
    """The canonical discrete run: `optax.sgd(lr)` (traced `lr`) for `steps` updates,
    recording probabilities every `every` updates; `reg` a `gf.Regularization` or `None`."""
    dt = dtype_of(policy)
    reward = jnp.asarray(reward, dt)
    true_reward = reward if true_reward is None else jnp.asarray(true_reward, dt)
    lr = jnp.asarray(lr, dt)
    return _sgd(policy, reward, true_reward, lr, reg, steps, every, tuple(targets))


@contextlib.contextmanager
def count_compiles():
    """Count XLA compilations inside the block: `with count_compiles() as n: ...; n[0]`."""
    count = [0]

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            count[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield count
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def softmax(x):
    """A NumPy softmax over the last axis (an oracle independent of JAX)."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def reference_probs(p_star: float = 0.10):
    """The reference ("stalling") problem of DESIGN.md: y* gets `p_star`, the mediocre
    output 0.5, the three bad outputs share the rest equally."""
    rest = (0.5 - p_star) / 3
    return (p_star, 0.5, rest, rest, rest)


def random_problem(seed, k, dtype):
    """A tabular policy with random logits and a random reward."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=k) * 1.5
    reward = rng.normal(size=k)
    return gf.TabularSoftmax(jnp.asarray(logits, dtype)), jnp.asarray(reward, dtype)


# ------------------------------------------------------------------ what a study prints

SUMMARY_WIDTH = 100  # the widest line a study may print (gradflow._study_utils.WIDTH)


def printed(fn, *args, **kwargs):
    """Call `fn(*args, **kwargs)` and return `(its result, what it printed on stdout)`
    (module-scoped fixtures cannot use `capsys`)."""
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = fn(*args, **kwargs)
    return result, buf.getvalue()


def check_summary(text: str, *expected: str) -> None:
    """A study's printed summary: not empty, every line at most `SUMMARY_WIDTH` columns, and
    each of `expected` in it."""
    assert text.strip(), "the study printed nothing"
    wide = [f"{len(line)}: {line}" for line in text.splitlines() if len(line) > SUMMARY_WIDTH]
    assert not wide, "lines wider than 100 columns:\n" + "\n".join(wide)
    missing = [e for e in expected if e not in text]
    assert not missing, f"missing from the printed summary: {missing}\n{text}"
