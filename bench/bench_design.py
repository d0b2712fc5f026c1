"""Proxy design benchmarks (issue 12), measured side by side in one run.

1. One design on the 5-output stalling problem (p(y*) = 0.10): exact flow in float64,
   time to true reward 0.9, L-inf budget 1, 200 Adam steps, every step a gradient through
   the training run. Against the same projected Adam with gradients by central finite
   differences of scipy `solve_ivp` (LSODA, rtol 1e-8, terminal event): one such gradient
   (11 solves) is timed and scaled to 200 steps.
2. A batch of 256 designs (256 initial policies, p(y*) from 0.02 to 0.3) in one compiled
   call (`jax.vmap` over the policies).

Run: `python bench/bench_design.py` (`--quick`: a batch of 32).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from bench_core import R_TRUE, TARGET, scipy_time

import gradflow as gf

T1 = 2000.0


def stalling(p_best):
    rest = (1 - p_best - 0.5) / 3
    return gf.TabularSoftmax.from_probs(jnp.stack([p_best, 0.5, rest, rest, rest]))


def design(policy, steps):
    return gf.design_proxy(policy, jnp.asarray(R_TRUE), method=gf.GradientFlow(), target=TARGET, t1=T1, budget=1.0,
                           steps=steps)


def timed(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)
    steps, batch = 200, 32 if args.quick else 256
    one = jax.jit(lambda p: design(stalling(p), steps))

    print("[1] one design: stalling problem, flow (float64), budget 1 in L-inf, 200 Adam steps")
    _, first = timed(one, 0.10)
    d, wall = timed(one, 0.10)
    wall = min(wall, *(timed(one, 0.10)[1] for _ in range(2)))  # best of 3
    print(f"    compile + run {first:.1f} s; run (best of 3) {wall:.2f} s ({(steps + 1) / wall:,.0f} gradients "
          "through training per second)")
    print(f"    time to {TARGET}: truth {float(d.reference_time):.5g} -> designed {float(d.time):.5g} "
          f"({float(d.speedup):.0f}x sooner); proxy {np.round(np.asarray(d.reward), 3).tolist()}")
    p0 = np.asarray(stalling(0.10).probs())[0]
    r = np.asarray(R_TRUE, float)
    h, per_grad = 1e-5, np.inf
    for _ in range(3):  # best of 3
        start = time.perf_counter()
        fd = [(scipy_time(r + h * e, T1, 1e-8, p0=p0) - scipy_time(r - h * e, T1, 1e-8, p0=p0)) / (2 * h)
              for e in np.eye(r.size)]
        scipy_time(r, T1, 1e-8, p0=p0)
        per_grad = min(per_grad, time.perf_counter() - start)
    print(f"    scipy LSODA, central differences (best of 3): {per_grad:.3f} s per gradient (11 solves) -> "
          f"{per_grad * (steps + 1):.1f} s for the design; ratio {per_grad * (steps + 1) / wall:,.0f}x")
    print(f"    (its gradient at the truth: {np.round(fd, 1).tolist()})")

    print(f"[2] a batch of {batch} designs in one compiled call (vmap over initial policies, p(y*) in [0.02, 0.3])")
    many = jax.jit(jax.vmap(lambda p: design(stalling(p), steps)))
    p_best = jnp.linspace(0.02, 0.3, batch)
    _, first = timed(many, p_best)
    ds, wall = timed(many, p_best)
    ok = np.asarray(ds.status) == 0
    designed, truth = np.isfinite(np.asarray(ds.time)), np.isfinite(np.asarray(ds.reference_time))
    speed = np.asarray(ds.speedup)[ok & designed & truth]
    print(f"    compile + run {first:.1f} s; run {wall:.2f} s: {batch / wall:,.1f} designs/s, "
          f"{batch * (steps + 1) / wall:,.0f} gradients through training per second")
    print(f"    {ok.sum()} of {batch} ok; the designed proxy reaches {TARGET} within t1 = {T1:g} in "
          f"{designed.sum()}, the truth in {truth.sum()}; where both do, the speed-up is "
          f"{np.median(speed):.0f}x (median), {speed.min():.0f}x to {speed.max():.0f}x")


if __name__ == "__main__":
    main()
