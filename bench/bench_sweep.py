"""Reward sweeps through `gradflow.sweep.run`, measured side by side in one run (issue 4, item 7).

The stalling problem with p(y*) = 0.10: initial policy [0.10, 0.5, 0.4/3, 0.4/3, 0.4/3],
true reward [1, 0.8, -1, -1, -1]; every run trains on one proxy reward (the true reward
plus Gaussian noise of scale 0.5) and records the per-proxy row of `gf.proxy_row` (time to
true reward 0.9, final true reward, status, longest stall, initial rate), float32.

1. Runs per second of a 100,000-run sweep through `gradflow.sweep.run` (written as
   Parquet parts to a temporary folder, progress bar off, chunk_size 5,000 so that every
   size is a whole number of chunks) for
   (a) exact-gradient SGD, gf.GradientAscent(optax.sgd(0.1), 50_000), vs a plain per-run
       NumPy loop of the same algorithm (float64, the time-to-reward check every step);
   (b) the adaptive flow, gf.GradientFlow() (Tsit5, its float32 defaults rtol 1e-5,
       atol 1e-7) to t1 = 5000, vs scipy's solve_ivp (LSODA, float64) one run
       at a time with a terminal event at the target.
   The NumPy side is timed on a few runs and scaled; printed as runs/s and the ratio
   gradflow / NumPy. Compile time (tracing, lowering and XLA compilation, measured with
   `jax.monitoring` time spans) is left out of the gradflow rate and printed separately,
   as is the end-to-end rate including it. Every sweep runs in a fresh subprocess. The
   time-to-reward of the NumPy-timed runs is compared between the two (max difference).
2. Peak memory as the sweep grows: the flow sweep of (1b) at 10^4 and 10^5 runs (the
   10^5 point is the sweep of (1b) itself), each in a fresh subprocess with the same
   chunk_size, printing peak RSS (`resource.getrusage(RUSAGE_SELF).ru_maxrss`) while the
   chunks are computed and after `sweep.run` has read the finished table back, and runs/s.
   10^6 flow runs take 30-40 minutes on a 2-core machine, so they are left out by default
   (the estimate is printed); add them with `--memory-sizes 10000,100000,1000000`.

Run: `python bench/bench_sweep.py` (add `--quick` for a much smaller, faster version: 2,000
runs, SGD 5,000 steps, chunk_size 500, part 2 only the sweep of (1b)).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# The per-run NumPy/scipy references are bench_core's (this folder is on sys.path when a
# script here runs), from this benchmark's initial policy P0.
from bench_core import numpy_sgd, scipy_time

P0 = np.array([0.10, 0.5, 0.4 / 3, 0.4 / 3, 0.4 / 3])
R_TRUE = np.array([1.0, 0.8, -1.0, -1.0, -1.0])
TARGET = 0.9
NOISE = 0.5
LR = 0.1
COLUMN = f"time_to_{TARGET:g}"


def proxies(n: int, seed: int = 0) -> np.ndarray:
    """Random proxy rewards (float32): the true reward plus Gaussian noise (scale 0.5)."""
    noise = np.random.default_rng(seed).standard_normal((n, R_TRUE.size), dtype=np.float32)
    return (R_TRUE.astype(np.float32) + np.float32(NOISE) * noise).astype(np.float32)


def maxrss_mib() -> float:
    """Peak resident set size of this process so far, MiB (ru_maxrss is KiB on Linux)."""
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 2**10
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# --- the gradflow side, one sweep per fresh process -------------------------------------


def worker(method: str, n: int, out: str, chunk_size: int, steps: int, t1: float) -> None:
    """Run one sweep through gradflow.sweep.run and print its measurements as JSON."""
    import jax
    import jax.numpy as jnp
    import optax
    import pyarrow.parquet  # noqa: F401  (imported by the first write anyway; counted at start)

    import gradflow as gf

    rss_start = maxrss_mib()
    rewards = proxies(n)
    policy = gf.TabularSoftmax.from_probs(jnp.asarray(P0, jnp.float32))
    if method == "sgd":
        meth, horizon = gf.GradientAscent(optax.sgd(LR), steps), None
    else:
        meth, horizon = gf.GradientFlow(), t1
    row = gf.proxy_row(policy, jnp.asarray(R_TRUE, jnp.float32), method=meth,
                       targets=(TARGET,), t1=horizon)

    spans: list[tuple[float, float]] = []

    def on_span(event, start_time, end_time, **kwargs):
        if event.startswith("/jax/core/compile/"):
            spans.append((start_time, end_time))

    jax.monitoring.register_event_time_span_listener(on_span)
    marks: list[tuple[float, float]] = []  # (time, peak RSS) as each chunk finishes

    def post(columns):
        marks.append((time.perf_counter(), maxrss_mib()))
        return columns

    t0 = time.perf_counter()
    table = gf.sweep.run(row, rewards, out, chunk_size=chunk_size, progress=False, post=post)
    wall = time.perf_counter() - t0
    compile_s, end = 0.0, -np.inf  # total length of the union of the compile spans
    for a, b in sorted(spans):
        compile_s += max(0.0, b - max(a, end))
        end = max(end, b)
    status = np.asarray(table["status"])
    print(json.dumps(dict(
        n=n, wall=wall, compile=compile_s, chunks=len(marks),
        rss_start=rss_start, rss_first_chunk=marks[0][1], rss_chunks=marks[-1][1],
        rss_end=maxrss_mib(), inputs_mib=rewards.nbytes / 2**20,
        not_ok=int(np.sum(status != gf.status_code(gf.Status.ok))),
        reached=float(np.mean(np.isfinite(np.asarray(table[COLUMN])))),
    )))


def sweep(method: str, n: int, out: Path, chunk_size: int, steps: int = 0, t1: float = 0.0) -> dict:
    """Run `worker` in a fresh Python process and return its measurements."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, str(n), str(out),
           str(chunk_size), str(steps), str(t1)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise RuntimeError(f"sweep worker failed: {' '.join(cmd)}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["rate"] = n / (res["wall"] - res["compile"])
    res["rate_e2e"] = n / res["wall"]
    return res


def first_rows(out: Path, k: int) -> np.ndarray:
    import gradflow as gf

    return np.asarray(gf.sweep.read(out)[COLUMN][:k], float)


def print_sweep(res: dict, chunk_size: int) -> None:
    print(f"    gradflow.sweep.run, {res['n']} runs in {res['chunks']} chunks of {chunk_size}: "
          f"{res['wall'] - res['compile']:.1f} s -> {res['rate']:.1f} runs/s (compile "
          f"{res['compile']:.1f} s separately; end to end {res['wall']:.1f} s -> "
          f"{res['rate_e2e']:.1f} runs/s)")
    print(f"    {res['reached']:.1%} of the proxies reach {TARGET}; {res['not_ok']} runs not ok")


def agreement(hits: np.ndarray, ref: np.ndarray, unit: str) -> str:
    both = np.isfinite(hits) & np.isfinite(ref)
    same_inf = bool(np.array_equal(np.isinf(hits), np.isinf(ref)))
    if not both.any():
        return f"no run reached {TARGET} in both; never-reached runs agree: {same_inf}"
    err = np.abs(hits[both] - ref[both])
    return (f"max |diff| {err.max():.3g} {unit} (max rel {np.max(err / ref[both]):.1e}) on "
            f"{both.sum()} reached runs; never-reached runs agree: {same_inf}")


def bench_sgd(tmp: Path, n: int, steps: int, n_numpy: int, chunk_size: int) -> None:
    res = sweep("sgd", n, tmp / "sgd", chunk_size, steps=steps)
    rewards = proxies(n_numpy).astype(float)
    t0 = time.perf_counter()
    ref = np.array([numpy_sgd(r, steps, LR, P0) for r in rewards])
    t_np = (time.perf_counter() - t0) / n_numpy
    hits = first_rows(tmp / "sgd", n_numpy)
    print(f"[1a] SGD lr {LR}, {steps} steps, float32, time to true reward {TARGET}:")
    print_sweep(res, chunk_size)
    print(f"    NumPy per-run loop ({n_numpy} runs timed, float64): {t_np:.3f} s/run -> "
          f"{1 / t_np:.3f} runs/s")
    print(f"    ratio gradflow / NumPy: {res['rate'] * t_np:.0f}x "
          f"(end to end, compile included: {res['rate_e2e'] * t_np:.0f}x)")
    print(f"    time-to-reward vs NumPy (steps): {agreement(hits, ref, 'steps')}")
    print(f"      gradflow {', '.join(f'{h:g}' for h in hits)}")
    print(f"      NumPy    {', '.join(f'{h:g}' for h in ref)}")


def bench_flow(tmp: Path, n: int, t1: float, n_scipy: int, chunk_size: int) -> dict:
    import jax.numpy as jnp

    import gradflow as gf

    rtol, atol = gf.GradientFlow().tolerances(jnp.float32)
    res = sweep("flow", n, tmp / "flow", chunk_size, t1=t1)
    rewards = proxies(n_scipy).astype(float)
    hits = first_rows(tmp / "flow", n_scipy)
    print(f"[1b] Adaptive flow (gf.GradientFlow(): Tsit5, float32 defaults rtol {rtol:g}, atol {atol:g}) "
          f"to t1 = {t1:g}, time to true reward {TARGET}:")
    print_sweep(res, chunk_size)
    # Two references: LSODA at the same tolerances, and at rtol 1e-8 (the reference of
    # bench_core [2], issue 11's target).
    for sp_rtol, sp_atol in ((rtol, atol), (1e-8, 1e-12)):
        t0 = time.perf_counter()
        ref = np.array([scipy_time(r, t1, sp_rtol, atol=sp_atol, p0=P0) for r in rewards])
        t_sp = (time.perf_counter() - t0) / n_scipy
        print(f"    scipy solve_ivp LSODA rtol {sp_rtol:g}, atol {sp_atol:g}, float64, terminal event, one "
              f"at a time ({n_scipy} runs timed): {t_sp * 1e3:.1f} ms/run -> {1 / t_sp:.1f} runs/s")
        print(f"      ratio gradflow / scipy: {res['rate'] * t_sp:.1f}x "
              f"(end to end, compile included: {res['rate_e2e'] * t_sp:.1f}x)")
        print(f"      time-to-reward vs scipy: {agreement(hits, ref, 'time units')}")
    return res


def bench_memory(tmp: Path, sizes: list[int], reuse: dict, t1: float, chunk_size: int) -> None:
    print(f"[2] Peak memory as the flow sweep grows (t1 = {t1:g}, chunk_size {chunk_size}, "
          "each size in a fresh process; peak RSS MiB):")
    rows = []
    print(f"    {'runs':>9} {'at start':>9} {'1st chunk':>9} {'all chunks':>10} "
          f"{'+ read back':>11} {'inputs':>7} {'runs/s':>8}  note")
    for n in sizes:
        if n == reuse["n"]:
            res, note = reuse, "the sweep of [1b]"
        else:
            res, note = sweep("flow", n, tmp / f"flow-{n}", chunk_size, t1=t1), ""
        rows.append(res)
        print(f"    {n:>9} {res['rss_start']:>9.0f} {res['rss_first_chunk']:>9.0f} "
              f"{res['rss_chunks']:>10.0f} {res['rss_end']:>11.0f} {res['inputs_mib']:>7.1f} "
              f"{res['rate']:>8.1f}  {note}")
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        print(f"    from {a['n']} to {b['n']} runs ({b['n'] / a['n']:g}x): peak RSS while computing "
              f"{b['rss_chunks'] - a['rss_chunks']:+.0f} MiB, after reading back "
              f"{b['rss_end'] - a['rss_end']:+.0f} MiB (the proxy array itself "
              f"{b['inputs_mib'] - a['inputs_mib']:+.1f} MiB)")
    if max(sizes) < 10**6:
        est = 10**6 / reuse["rate"] / 60
        print(f"    10^6 runs left out: ~{est:.0f} min at the rate of [1b] on this machine "
              "(add them with --memory-sizes ...,1000000)")
    print("    'all chunks': peak up to the last chunk's computation; '+ read back': after "
          "sweep.run has read the whole table back from Parquet; 'inputs': the proxy array.")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        method, n, out, chunk, steps, t1 = sys.argv[2:8]
        worker(method, int(n), out, int(chunk), int(steps), float(t1))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (for a smoke test)")
    parser.add_argument("--memory-sizes", default=None,
                        help="comma-separated sweep sizes for part 2 (default 10000,100000)")
    args = parser.parse_args()
    import jax

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} device(s), "
          f"{os.cpu_count()} CPU cores")
    if args.quick:
        # part 2 only reuses the sweep of [1b]: each extra size costs a fresh compile (~15 s)
        n, steps, t1, chunk, n_numpy, n_scipy, sizes = 2000, 5000, 5000.0, 500, 2, 10, [2000]
    else:
        n, steps, t1, chunk, n_numpy, n_scipy, sizes = 100_000, 50_000, 5000.0, 5000, 5, 50, [10**4, 10**5]
    if args.memory_sizes:
        sizes = [int(s) for s in args.memory_sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench_sweep-") as tmp:
        tmp = Path(tmp)
        bench_sgd(tmp, n, steps, n_numpy, chunk)
        flow = bench_flow(tmp, n, t1, n_scipy, chunk)
        bench_memory(tmp, sizes, flow, t1, chunk)


if __name__ == "__main__":
    main()
