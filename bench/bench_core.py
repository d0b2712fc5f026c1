"""Core benchmarks, measured side by side in one run (issue 2).

1. Exact-gradient SGD (lr 0.1, 50,000 steps) with time-to-reward, vmapped over 10,000
   random proxy rewards of the stalling problem, vs a plain per-run NumPy loop of the
   same algorithm (timed on a few runs and scaled). Target: >= 330x.
2. Issue 11 (a): time-to-reward by the flow at its default settings (float64), 1,000
   proxies at once, t1 = 1e5, tracking only the target and stopping there, vs scipy's
   solve_ivp (LSODA, rtol 1e-8, terminal event) one run at a time; they must agree to
   1e-6 relative. Target: >= 100x.
3. Issue 11 (c): vector-field evaluations of the adaptive flow vs 50,000 Euler steps
   (exact-gradient SGD), with the error of each at t = 5000 against a tight reference.
4. Part 1 on a log-linear policy (5 features, fitted to the same initial policy) vs a
   per-run NumPy loop of the same update.

Run: `python bench/bench_core.py` (add `--quick` for a smaller, faster version).
Flow parts run in float64 (research precision); the SGD part in float32, as a sweep would.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy.integrate import solve_ivp

import gradflow as gf

P0 = np.array([0.05, 0.5, 0.15, 0.15, 0.15])
R_TRUE = np.array([1.0, 0.8, -1.0, -1.0, -1.0])
TARGET = 0.9


def proxies(n: int, seed: int = 0) -> np.ndarray:
    """Random proxy rewards: the true reward plus Gaussian noise (scale 0.5)."""
    return R_TRUE + 0.5 * np.random.default_rng(seed).standard_normal((n, R_TRUE.size))


def numpy_sgd(r_proxy: np.ndarray, steps: int, lr: float = 0.1, p0: np.ndarray = P0) -> float:
    """The same algorithm as gf.GradientAscent(optax.sgd(lr), steps) with time-to-reward,
    as a plain per-run NumPy loop."""
    theta = np.log(p0)
    hit = np.inf
    for n in range(steps + 1):
        z = np.exp(theta - theta.max())
        p = z / z.sum()
        if hit == np.inf and p @ R_TRUE >= TARGET:
            hit = n
        theta = theta + lr * p * (r_proxy - p @ r_proxy)
    return hit


def _sgd_side_by_side(title: str, policy, numpy_run, n_runs: int, steps: int, n_numpy: int, seed: int,
                      target: str = "") -> None:
    """gf.GradientAscent(optax.sgd(0.1), steps) with time-to-reward, vmapped over `n_runs`
    noisy proxies, against `numpy_run(r_proxy)` one run at a time."""
    method = gf.GradientAscent(optax.sgd(0.1), steps)
    r_true = jnp.asarray(R_TRUE, jnp.float32)

    @jax.jit
    def batch(rewards):
        def one(r):
            sol = gf.solve(policy, reward=r, true_reward=r_true, method=method,
                           saveat=gf.SaveAt(every=steps), targets=(TARGET,))
            return gf.time_to_reward(sol, TARGET)
        return jax.vmap(one)(rewards)

    rewards = proxies(n_runs, seed)
    rj = jnp.asarray(rewards, jnp.float32)
    batch(rj).block_until_ready()  # compile
    t0 = time.perf_counter()
    hits = np.asarray(batch(rj).block_until_ready())
    t_jax = time.perf_counter() - t0

    t0 = time.perf_counter()
    ref = [numpy_run(rewards[i]) for i in range(n_numpy)]
    t_np = (time.perf_counter() - t0) / n_numpy
    with np.errstate(invalid="ignore"):  # inf - inf where both never reach: no difference
        diff = np.nan_to_num(np.abs(hits[:n_numpy] - np.asarray(ref)), nan=0.0)
    jax_rate, np_rate = n_runs / t_jax, 1 / t_np
    print(f"{title}, {steps} steps, time to true reward {TARGET}:")
    print(f"    gradflow vmap over {n_runs} proxies: {t_jax:.2f} s -> {jax_rate:.1f} runs/s")
    print(f"    NumPy per-run loop ({n_numpy} runs timed): {t_np:.3f} s/run -> {np_rate:.3f} runs/s")
    print(f"    ratio: {jax_rate / np_rate:.0f}x{target}")
    print(f"    crossing steps vs NumPy (float32 vs float64): max |diff| {diff.max():.0f} steps "
          f"(runs: {', '.join(f'{h:g}' for h in hits[:n_numpy])} vs {', '.join(f'{h:g}' for h in ref)})")


def bench_sgd(n_runs: int, steps: int, n_numpy: int) -> None:
    policy = gf.TabularSoftmax.from_probs(jnp.asarray(P0, jnp.float32))
    _sgd_side_by_side("[1] SGD lr 0.1", policy, lambda r: numpy_sgd(r, steps), n_runs, steps, n_numpy, 0,
                      "   (target >= 330x)")


def scipy_time(r_proxy: np.ndarray, t1: float, rtol: float, method: str = "LSODA",
               atol: float = 1e-12, p0: np.ndarray = P0) -> float:
    """Time to TARGET along the flow on `r_proxy` from `p0`: solve_ivp with a terminal event."""
    def f(t, theta):
        z = np.exp(theta - theta.max())
        p = z / z.sum()
        return p * (r_proxy - p @ r_proxy)

    def event(t, theta):
        z = np.exp(theta - theta.max())
        return (z / z.sum()) @ R_TRUE - TARGET

    event.terminal, event.direction = True, 1
    sol = solve_ivp(f, (0.0, t1), np.log(p0), method=method, rtol=rtol, atol=atol, events=event)
    return float(sol.t_events[0][0]) if sol.t_events[0].size else np.inf


def bench_flow(n_runs: int, n_scipy: int, t1: float = 1e5) -> None:
    """Issue 11 (a): default settings, time to 0.9 for many proxies, vs LSODA per run."""
    with jax.enable_x64(True):
        policy = gf.TabularSoftmax.from_probs(jnp.asarray(P0))
        method = gf.GradientFlow()  # defaults: Tsit5, float64 rtol 1e-7, atol 1e-9, max_steps 4096
        r_true = jnp.asarray(R_TRUE)

        def batch_fn(stop: bool):
            @jax.jit
            def batch(rewards):
                def one(r):
                    sol = gf.solve(policy, reward=r, true_reward=r_true, method=method, t1=t1,
                                   saveat=gf.SaveAt(n=2), targets=(TARGET,), stop_at_targets=stop)
                    return gf.time_to_reward(sol, TARGET), sol.num_steps + sol.num_rejected_steps, sol.status
                return jax.vmap(one)(rewards)
            return batch

        rewards = proxies(n_runs, seed=1)
        rj = jnp.asarray(rewards)
        out = {}
        for stop in (True, False):
            batch = batch_fn(stop)
            jax.block_until_ready(batch(rj))
            best = np.inf
            for _ in range(5):  # best of 5: the batch takes a fraction of a second
                t0 = time.perf_counter()
                res = jax.block_until_ready(batch(rj))
                best = min(best, time.perf_counter() - t0)
            out[stop] = (best, *res)
        t_jax, hits, nsteps, status = out[True]
        hits = np.asarray(hits)

        t_sp = np.inf
        for _ in range(3):  # best of 3, like the JAX side
            t0 = time.perf_counter()
            ref = np.array([scipy_time(rewards[i], t1, 1e-8) for i in range(n_scipy)])
            t_sp = min(t_sp, (time.perf_counter() - t0) / n_scipy)
    both = np.isfinite(ref) & np.isfinite(hits[:n_scipy])
    agree_inf = np.array_equal(np.isinf(ref), np.isinf(hits[:n_scipy]))
    rel = np.abs(hits[:n_scipy][both] - ref[both]) / ref[both]
    jax_rate, sp_rate = n_runs / t_jax, 1 / t_sp
    not_ok = int(np.sum(~np.asarray(status == gf.Status.ok)))
    print(f"[2] Time to {TARGET} by the flow, gf.GradientFlow() defaults (Tsit5, rtol 1e-7, atol 1e-9, "
          f"float64), t1 = {t1:g}, {n_runs} proxies:")
    print(f"    gradflow jit(vmap(solve)), targets=(0.9,), stop_at_targets=True, SaveAt(n=2) (best of 5): "
          f"{t_jax:.3f} s -> {jax_rate:.0f} runs/s (median {np.median(np.asarray(nsteps)):.0f}, max "
          f"{np.max(np.asarray(nsteps))} solver steps per run, accepted + rejected; {not_ok} runs not ok)")
    print(f"    the same to t1 without stopping: {n_runs / out[False][0]:.0f} runs/s")
    print(f"    scipy solve_ivp LSODA rtol 1e-8, terminal event, one at a time ({n_scipy} timed, best of 3): "
          f"{t_sp * 1e3:.1f} ms/run -> {sp_rate:.1f} runs/s")
    print(f"    ratio: {jax_rate / sp_rate:.0f}x   (target >= 100x)")
    print(f"    agreement on {both.sum()} reached runs: max rel diff {rel.max():.2e} (target 1e-6); "
          f"never-reached runs agree: {agree_inf}")
    exact = np.array([scipy_time(rewards[i], t1, 1e-13, "DOP853", 1e-14) for i in range(n_scipy)])
    ok = np.isfinite(exact)
    print(f"    vs a tight reference (DOP853, rtol 1e-13): gradflow max rel error "
          f"{(np.abs(hits[:n_scipy][ok] - exact[ok]) / exact[ok]).max():.1e}, LSODA "
          f"{(np.abs(ref[ok] - exact[ok]) / exact[ok]).max():.1e}")


def bench_steps(t1: float = 5000.0, fixed_steps: int = 50_000) -> None:
    """Issue 11 (c): vector-field evaluations of the adaptive flow vs 50,000 Euler steps."""
    with jax.enable_x64(True):
        policy = gf.TabularSoftmax.from_probs(jnp.asarray(P0))
        r = jnp.asarray(R_TRUE)
        euler = gf.solve(policy, reward=r, method=gf.GradientAscent(optax.sgd(t1 / fixed_steps), fixed_steps),
                         saveat=gf.SaveAt(every=fixed_steps))
        fine = gf.solve(policy, reward=r, method=gf.GradientFlow(rtol=1e-12, atol=1e-14, max_steps=100_000), t1=t1,
                        saveat=gf.SaveAt(n=2))
        v_ref = float(fine.final_true_reward)
        print(f"[3] True-reward flow on the stalling problem to t = {t1:g}: V_G(t1) = {v_ref:.10f} "
              f"(Tsit5, rtol 1e-12). {fixed_steps} Euler steps (exact-gradient SGD, lr {t1 / fixed_steps:g}): "
              f"{fixed_steps} vector-field evaluations, |error| {abs(float(euler.final_true_reward) - v_ref):.1e}")
        for rtol in (None, 1e-8, 1e-10):
            method = gf.GradientFlow(rtol=rtol, atol=None if rtol is None else rtol * 1e-2)
            sol = gf.solve(policy, reward=r, method=method, t1=t1, saveat=gf.SaveAt(n=2))
            steps = int(sol.num_steps) + int(sol.num_rejected_steps)
            evals = 6 * steps + 2  # Tsit5: 7 stages, first same as last; + the first and the initial rate
            diff = abs(float(sol.final_true_reward) - v_ref)
            print(f"    adaptive rtol {method.tolerances(jnp.float64)[0]:g}: {int(sol.num_steps)} accepted + "
                  f"{int(sol.num_rejected_steps)} rejected steps, {evals} vector-field evaluations "
                  f"({fixed_steps / evals:.0f}x fewer than Euler), |error| {diff:.1e}")


def numpy_loglinear_sgd(r_proxy: np.ndarray, phi: np.ndarray, theta: np.ndarray, steps: int,
                        lr: float = 0.1) -> float:
    """gf.GradientAscent(optax.sgd(lr), steps) on a log-linear policy, as a NumPy loop:
    theta += lr * phi^T (p * (r - p @ r))."""
    hit = np.inf
    for n in range(steps + 1):
        s = phi @ theta
        z = np.exp(s - s.max())
        p = z / z.sum()
        if hit == np.inf and p @ R_TRUE >= TARGET:
            hit = n
        theta = theta + lr * phi.T @ (p * (r_proxy - p @ r_proxy))
    return hit


def bench_loglinear(n_runs: int, steps: int, n_numpy: int) -> None:
    """[4] The same SGD bench on a log-linear policy: y* has feature 1.5 e1, y_med a unit
    vector orthogonal to it, the bad outputs e3..e5, fitted exactly to P0."""
    phi = np.zeros((5, 5))
    phi[0, 0], phi[1, 1] = 1.5, 1.0
    for j in range(2, 5):
        phi[j, j] = 1.0
    policy = gf.LogLinear.from_probs(jnp.asarray(phi, jnp.float32), jnp.asarray(P0, jnp.float32))
    theta0 = np.asarray(policy.theta, np.float64)
    _sgd_side_by_side("[4] Log-linear SGD lr 0.1", policy, lambda r: numpy_loglinear_sgd(r, phi, theta0, steps),
                      n_runs, steps, n_numpy, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (for a smoke test)")
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} device(s)")
    if args.quick:
        bench_sgd(n_runs=1000, steps=5000, n_numpy=3)
        bench_flow(n_runs=100, n_scipy=10)
    else:
        bench_sgd(n_runs=10_000, steps=50_000, n_numpy=3)
        bench_flow(n_runs=1000, n_scipy=50)
    bench_steps()
    if args.quick:
        bench_loglinear(n_runs=1000, steps=5000, n_numpy=3)
    else:
        bench_loglinear(n_runs=10_000, steps=50_000, n_numpy=3)


if __name__ == "__main__":
    main()
