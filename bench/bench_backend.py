"""The core, seed and sweep workloads on every backend present, side by side (issue 15).

Each backend runs in its own subprocess (`JAX_PLATFORMS=cpu`, then the default platform
if it is not the CPU: a GPU with `pip install 'gradflow[cuda]'`), on the stalling problem
(initial policy [0.10, 0.5, 0.4/3, 0.4/3, 0.4/3], true reward [1, 0.8, -1, -1, -1],
float32, time to true reward 0.9 tracked online):

1. core: exact-gradient SGD (optax.sgd(0.1), 20,000 steps), vmapped over N proxies (the
   true reward plus Gaussian noise of scale 0.5), one jit;
2. seeds: REINFORCE (gf.Reinforce, 1 sample per step, 20,000 steps) vmapped over N keys;
3. sweep: the adaptive flow to t1 = 5000 through `gradflow.sweep.run` (N proxies, chunk
   size N / 4, all the backend's devices, Parquet parts in a temporary folder).

Printed as runs per second per backend (compile time excluded: each workload runs once
to compile, then is timed), with the ratio to the CPU. Then the kernel guard: workloads 1 and 2
with the sums over outputs written out (`gradflow._engine.ops`, tuned for XLA's CPU code) and
with plain reductions, on each backend; the library uses the first on CPU and the second
elsewhere, and the ratio says whether that is right for the backend at hand (workloads 1
and 2: the exact gradient, and sampling with its per-draw sums).

Run: `python bench/bench_backend.py` (`--quick` for smaller batches). GPU figures, when a
GPU was available, are recorded in docs/sweeps.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

P0 = np.array([0.10, 0.5, 0.4 / 3, 0.4 / 3, 0.4 / 3])
R_TRUE = np.array([1.0, 0.8, -1.0, -1.0, -1.0])


def _time(fn, *args) -> float:
    import jax

    jax.block_until_ready(fn(*args))  # compile
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def child(n: int) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    import gradflow as gf
    from gradflow._engine import ops as _ops

    policy = gf.TabularSoftmax.from_probs(jnp.asarray(P0, jnp.float32))
    true = jnp.asarray(R_TRUE, jnp.float32)
    noise = np.random.default_rng(0).standard_normal((n, R_TRUE.size), dtype=np.float32)
    proxies = jnp.asarray(R_TRUE + 0.5 * noise, jnp.float32)
    sgd = gf.GradientAscent(optax.sgd(0.1), 20_000)

    reinforce = gf.Reinforce(optax.sgd(0.1), 20_000)
    keys = jax.random.split(jax.random.key(0), n)

    def core():  # a new function: compiled anew (after the kernel rule changed)
        return n / _time(jax.jit(jax.vmap(lambda r: gf.solve(policy, reward=r, true_reward=true, method=sgd,
                                                             targets=(0.9,), saveat=gf.SaveAt(every=20_000))
                                          .target_times)), proxies)

    def seeds():
        return n / _time(jax.jit(jax.vmap(lambda k: gf.solve(policy, reward=true, method=reinforce, key=k,
                                                             targets=(0.9,), saveat=gf.SaveAt(every=20_000))
                                          .target_times)), keys)

    out = {"backend": jax.default_backend(), "devices": len(jax.devices()),
           "device": str(jax.devices()[0].device_kind)}
    out["core"], out["seeds"] = core(), seeds()
    row = gf.proxy_row(policy, true, method=gf.GradientFlow(), targets=(0.9,), t1=5000.0)
    with tempfile.TemporaryDirectory() as tmp:
        def sweep(i=[0]):  # noqa: B006 - a new folder per call: nothing is resumed
            i[0] += 1
            return gf.sweep.run(row, proxies, f"{tmp}/{i[0]}", chunk_size=max(n // 4, 1), progress=False)["row"]

        out["sweep"] = n / _time(sweep)
    for name, rule in (("unrolled", lambda k: k <= _ops.UNROLL_MAX_OUTPUTS), ("reductions", lambda k: False)):
        _ops.unrolled = rule
        out[f"core_{name}"], out[f"seeds_{name}"] = core(), seeds()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batches of 2,000 instead of 20,000")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = args.n or (2_000 if args.quick else 20_000)
    if args.child:
        print(json.dumps(child(n)))
        return
    default = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"], capture_output=True,
                             text=True, check=True).stdout.strip()
    results = []
    for platforms in ["cpu"] + ([default] if default != "cpu" else []):
        proc = subprocess.run([sys.executable, __file__, "--child", "--n", str(n)],
                              env={**os.environ, "JAX_PLATFORMS": platforms}, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"the {platforms} backend failed")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if default == "cpu":
        print("(no backend besides the CPU is present: a GPU needs `pip install 'gradflow[cuda]'` on a machine with one)")
    cpu = results[0]
    names = {"core": "core: SGD, 20,000 steps", "seeds": "seeds: REINFORCE, 20,000 steps",
             "sweep": "sweep: flow to t1 = 5000"}
    head = "".join(f"{r['backend']} ({r['devices']} x {r['device']})"[:30].rjust(32) for r in results)
    print(f"{n:,} runs per workload, runs per second (ratio to the CPU)\n{'':34s}{head}")
    for key, name in names.items():
        cells = "".join(f"{r[key]:14,.0f} (x{r[key] / cpu[key]:6.2f})".rjust(32) for r in results)
        print(f"{name:34s}{cells}")
    print("Kernel guard: the sums over few outputs (and draws) written out vs plain reductions, runs/s")
    for r in results:
        chosen = "written out" if r["backend"] == "cpu" else "reductions"
        for key in ("core", "seeds"):
            a, b = r[f"{key}_unrolled"], r[f"{key}_reductions"]
            ratio = max(a, b) / min(a, b)
            verdict = ("the same within 10%" if ratio < 1.1 else
                       f"{'written out' if a > b else 'reductions'} faster (x{ratio:.2f})")
            right = ratio < 1.1 or (a > b) == (chosen == "written out")
            print(f"  {r['backend']}, {key}: written out {a:,.0f}, reductions {b:,.0f}: {verdict}; gradflow uses "
                  f"{chosen} here{'' if right else ' (WRONG: switch the rule in gradflow._engine.ops)'}")

if __name__ == "__main__":
    main()
