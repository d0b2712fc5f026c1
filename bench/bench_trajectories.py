"""What trajectories on disk cost a sweep, measured side by side in one run (issue 15).

The sweep of bench_sweep.py (1b): the stalling problem with p(y*) = 0.10, proxies = the true
reward plus Gaussian noise (scale 0.5), the adaptive flow gf.GradientFlow() to t1 = 5000
(float32), the per-proxy row of `gf.proxy_row` with the time to 0.9, through
`gradflow.sweep.run` (chunk_size 5,000, Parquet parts in a temporary folder):

1. without trajectories;
2. with trajectories: the true and proxy reward of every run at 100 evenly spaced times,
   written to the Zarr store `trajectories.zarr` (`gf.sweep.Trajectories`).

Each runs in a fresh subprocess, and prints runs per second (compile time excluded:
the first chunk is a warm-up sweep of the same structure into another folder), peak RSS
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`), and bytes on disk per run (the Parquet
summary, and the store). The ratio line compares (2) with (1).

Run: `python bench/bench_trajectories.py` (10^5 runs each, about 10 minutes on 2 cores;
`--quick` for 10^4).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

P0 = np.array([0.10, 0.5, 0.4 / 3, 0.4 / 3, 0.4 / 3])
R_TRUE = np.array([1.0, 0.8, -1.0, -1.0, -1.0])
POINTS = 100
CHUNK = 5000
T1 = 5000.0


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def child(n: int, with_trajectories: bool) -> dict:
    import jax.numpy as jnp

    import gradflow as gf

    policy = gf.TabularSoftmax.from_probs(jnp.asarray(P0, jnp.float32))
    true = jnp.asarray(R_TRUE, jnp.float32)
    noise = np.random.default_rng(0).standard_normal((n, R_TRUE.size), dtype=np.float32)
    proxies = (R_TRUE + 0.5 * noise).astype(np.float32)
    record = gf.SaveAt(n=POINTS) if with_trajectories else None
    row = gf.proxy_row(policy, true, method=gf.GradientFlow(), targets=(0.9,), t1=T1, record=record)
    traj = (gf.sweep.Trajectories(np.linspace(0.0, T1, POINTS), {"true_reward": (), "proxy_reward": ()},
                                  input_dims={"input": ("output",)}) if with_trajectories else None)
    with tempfile.TemporaryDirectory() as tmp:
        # Warm-up: the same structure on one chunk compiles the row function.
        gf.sweep.run(row, proxies[:CHUNK], Path(tmp) / "warm", chunk_size=CHUNK, trajectories=traj,
                     progress=False)
        out = Path(tmp) / "sweep"
        start = time.perf_counter()
        table = gf.sweep.run(row, proxies, out, chunk_size=CHUNK, trajectories=traj, progress=False)
        elapsed = time.perf_counter() - start
        assert len(table["row"]) == n
        summary, store = _bytes(out / "summary.parquet"), _bytes(out / "trajectories.zarr")
        if with_trajectories:
            curves = gf.sweep.read_trajectories(out)["true_reward"]
            assert curves.shape == (n, POINTS) and np.isfinite(curves).all()
    return {"runs_per_s": n / elapsed, "seconds": elapsed, "peak_rss_mb": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024, "summary_bytes_per_run": summary / n,
        "store_bytes_per_run": store / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^4 runs instead of 10^5")
    parser.add_argument("--child", choices=["with", "without"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = args.n or (10_000 if args.quick else 100_000)
    if args.child:
        print(json.dumps(child(n, args.child == "with")))
        return
    print(f"Flow sweep of {n:,} runs (t1 = {T1:g}, float32, chunk_size {CHUNK:,}); each variant in a fresh process.")
    results = {}
    for variant in ("without", "with"):
        proc = subprocess.run([sys.executable, __file__, "--child", variant, "--n", str(n)], capture_output=True,
                              text=True, check=True)
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{'':28s}{'runs/s':>10s}{'seconds':>10s}{'peak RSS':>12s}{'table B/run':>13s}{'store B/run':>13s}")
    for variant, r in results.items():
        name = f"{variant} trajectories" + (f" ({POINTS} times)" if variant == "with" else "")
        print(f"{name:28s}{r['runs_per_s']:10.0f}{r['seconds']:10.1f}{r['peak_rss_mb']:10.0f} MB"
              f"{r['summary_bytes_per_run']:13.1f}{r['store_bytes_per_run']:13.1f}")
    w, wo = results["with"], results["without"]
    print(f"with / without: runs/s x{w['runs_per_s'] / wo['runs_per_s']:.2f}, peak RSS "
          f"x{w['peak_rss_mb'] / wo['peak_rss_mb']:.2f}; the store holds {2 * POINTS * 4} bytes of series per run "
          f"uncompressed ({w['store_bytes_per_run']:.0f} compressed).")


if __name__ == "__main__":
    main()
