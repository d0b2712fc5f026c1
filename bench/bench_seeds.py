"""Seeds per second of the sample-based methods, measured side by side in one run.

On the stalling problem (initial policy [0.05, 0.5, 0.15, 0.15, 0.15], true reward
[1, 0.8, -1, -1, -1], trained on the true reward), with optax.sgd(0.1) for 50,000 steps
and the time to true reward 0.9 tracked online:

1. REINFORCE (gf.Reinforce: 1 sample per step, no baseline),
2. RLOO (gf.RLOO: 4 samples per step, leave-one-out baseline),

each vmapped over a batch of PRNG keys (one seed per key, float32, one jit) vs a plain
per-seed NumPy loop of the same algorithm (numpy.random.default_rng per seed, the same
inverse-CDF sampling with one uniform per draw, the same estimator and update, the
time-to-reward check at every step; float64; timed on a few seeds and scaled). Printed as
seeds/s and the ratio gradflow / NumPy; compile time is excluded from the timing (compile
and a warm-up call first) and printed separately.

The two implementations use different random streams, so they agree only statistically:
the sanity check compares the fraction of seeds that reach 0.9 and the mean final true
reward (with standard errors, and their difference in units of the combined error).

Run: `python bench/bench_seeds.py` (add `--quick` for a smaller, faster version).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradflow as gf

P0 = np.array([0.05, 0.5, 0.15, 0.15, 0.15])
R_TRUE = np.array([1.0, 0.8, -1.0, -1.0, -1.0])
TARGET = 0.9
LR = 0.1


def numpy_run(seed: int, steps: int, samples: int, rloo: bool, lr: float = LR) -> tuple[float, float]:
    """The same algorithm as gf.Reinforce(optax.sgd(lr), steps, samples) (no baseline) or
    gf.RLOO(optax.sgd(lr), steps, samples) with time-to-reward, as a plain per-seed NumPy
    loop. Returns (first step whose policy reaches TARGET or inf, final true reward)."""
    rng = np.random.default_rng(seed)
    uniforms = rng.random((steps, samples))  # one uniform per draw, drawn up front
    theta = np.log(P0)
    n_out = theta.size
    hit = np.inf
    for n in range(steps + 1):
        z = np.exp(theta - theta.max())
        p = z / z.sum()
        value = p @ R_TRUE
        if hit == np.inf and value >= TARGET:
            hit = n
        if n == steps:
            break
        # inverse CDF: y with cdf[y-1] <= u < cdf[y] (the last edge taken as +inf)
        y = np.minimum(np.searchsorted(np.cumsum(p), uniforms[n], side="right"), n_out - 1)
        r = R_TRUE[y]
        adv = samples / (samples - 1) * (r - r.mean()) if rloo else r
        # score-function estimate (1/k) sum_i A_i (e_{y_i} - p); sgd ascent step
        grad = (np.bincount(y, weights=adv, minlength=n_out) - p * adv.sum()) / samples
        theta = theta + lr * grad
    return hit, value


def _verdict(z: float) -> str:
    return f"diff / SE = {z:+.2f}: {'consistent' if abs(z) < 3 else 'NOT consistent'}"


def _compare_fraction(label: str, a: np.ndarray, b: np.ndarray) -> None:
    """Two-proportion z-test (pooled SE, which stays meaningful when one side has 0 hits)."""
    ka, kb, na, nb = int(a.sum()), int(b.sum()), a.size, b.size
    pa, pb, pool = ka / na, kb / nb, (ka + kb) / (na + nb)
    se = np.sqrt(pool * (1 - pool) * (1 / na + 1 / nb))
    z = (pa - pb) / se if se > 0 else 0.0
    print(f"      {label}: gradflow {pa:.3f} +- {np.sqrt(pa * (1 - pa) / na):.3f} ({ka}/{na}) vs "
          f"NumPy {pb:.3f} +- {np.sqrt(pb * (1 - pb) / nb):.3f} ({kb}/{nb})  ({_verdict(z)})")


def _compare_mean(label: str, a: np.ndarray, b: np.ndarray) -> None:
    """Welch z: difference of the means over the combined standard error."""
    ma, mb = a.mean(), b.mean()
    sa, sb = a.std(ddof=1) / np.sqrt(a.size), b.std(ddof=1) / np.sqrt(b.size)
    se = np.hypot(sa, sb)
    z = (ma - mb) / se if se > 0 else 0.0
    print(f"      {label}: gradflow {ma:.5f} +- {sa:.1e} vs NumPy {mb:.5f} +- {sb:.1e}  ({_verdict(z)})")


def bench_method(name: str, method: gf.AbstractSampledMethod, rloo: bool, n_seeds: int,
                 n_numpy: int) -> None:
    steps, samples = method.steps, method.samples
    policy = gf.TabularSoftmax.from_probs(jnp.asarray(P0, jnp.float32))
    r_true = jnp.asarray(R_TRUE, jnp.float32)

    def one(key):
        sol = gf.solve(policy, reward=r_true, method=method, saveat=gf.SaveAt(every=steps),
                       targets=(TARGET,), key=key)
        return gf.time_to_reward(sol, TARGET), sol.final_true_reward, gf.status_code(sol.status)

    keys = jax.random.split(jax.random.key(0), n_seeds)
    t0 = time.perf_counter()
    batch = jax.jit(jax.vmap(one)).lower(keys).compile()
    t_compile = time.perf_counter() - t0
    jax.block_until_ready(batch(keys))  # warm-up call
    t0 = time.perf_counter()
    hits, final, status = jax.block_until_ready(batch(keys))
    t_jax = time.perf_counter() - t0
    hits, final, status = np.asarray(hits), np.asarray(final), np.asarray(status)

    t0 = time.perf_counter()
    ref = [numpy_run(seed, steps, samples, rloo) for seed in range(n_numpy)]
    t_np = (time.perf_counter() - t0) / n_numpy
    ref_hits, ref_final = np.array([h for h, _ in ref]), np.array([v for _, v in ref])

    jax_rate, np_rate = n_seeds / t_jax, 1 / t_np
    print(f"{name}, sgd {LR}, {steps} steps, time to true reward {TARGET}:")
    print(f"    gradflow vmap over {n_seeds} keys (float32, one jit): {t_jax:.2f} s -> "
          f"{jax_rate:.1f} seeds/s ({int(np.sum(status != gf.status_code(gf.Status.ok)))} seeds not ok); "
          f"compile {t_compile:.2f} s (not timed)")
    print(f"    NumPy per-seed loop ({n_numpy} seeds timed, float64): {t_np:.3f} s/seed -> "
          f"{np_rate:.3f} seeds/s")
    print(f"    ratio gradflow / NumPy: {jax_rate / np_rate:.0f}x")
    print(f"    sanity (different random streams: statistical agreement only; "
          f"{n_seeds} vs {n_numpy} seeds):")
    _compare_fraction(f"fraction reaching {TARGET}", np.isfinite(hits), np.isfinite(ref_hits))
    _compare_mean("mean final true reward", final.astype(np.float64), ref_final)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (for a smoke test)")
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} device(s)")
    # (steps, seeds for REINFORCE, seeds for RLOO, NumPy seeds per method)
    steps, n_reinforce, n_rloo, n_numpy = (5000, 500, 500, 16) if args.quick else (50_000, 4000, 1000, 24)
    bench_method("[1] REINFORCE (1 sample/step, no baseline)",
                 gf.Reinforce(optax.sgd(LR), steps, samples=1, baseline="none"),
                 rloo=False, n_seeds=n_reinforce, n_numpy=n_numpy)
    bench_method("[2] RLOO (4 samples/step)", gf.RLOO(optax.sgd(LR), steps, samples=4),
                 rloo=True, n_seeds=n_rloo, n_numpy=n_numpy)


if __name__ == "__main__":
    main()
