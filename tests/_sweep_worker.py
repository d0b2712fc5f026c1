"""The sweep that `tests/test_sweep.py` runs, importable by the tests and runnable as a
subprocess (a fresh process can have 8 virtual CPU devices, or be SIGKILLed mid-sweep).

    python tests/_sweep_worker.py devices OUT   # 8 devices: assert, sweep to OUT, print JSON
    python tests/_sweep_worker.py slow OUT      # 1 device, many small slow chunks to OUT

The problem: the stalling example with p(y*) = 0.10, SGD (lr 0.1) for 300 steps, target
0.9, trained on `N` Gaussian perturbations of the true reward (scale 0.5: some proxies
reach the target, some do not).
"""

from __future__ import annotations

import json
import sys
import time

import jax
import jax.numpy as jnp
import optax

import gradflow as gf
from gradflow import sweep

PROBS = (0.1, 0.5, 0.4 / 3, 0.4 / 3, 0.4 / 3)
TRUE = (1.0, 0.8, -1.0, -1.0, -1.0)
N = 40
META = {"problem": "stalling p*=0.10", "method": "sgd(0.1) x 300", "target": 0.9}
SLOW_CHUNK = 4
SLOW_SLEEP_S = 0.5


def problem():
    """`(row function, proxies)` of the sweep (float32)."""
    policy = gf.TabularSoftmax.from_probs(jnp.asarray(PROBS, jnp.float32))
    true = jnp.asarray(TRUE, jnp.float32)
    method = gf.GradientAscent(optax.sgd(0.1), 300)
    fn = gf.proxy_row(policy, true, method=method, targets=(0.9,))
    proxies = gf.perturb.gaussian(jax.random.key(0), true, 0.5, N)
    return fn, proxies


def _devices(out: str) -> None:
    devices = jax.devices()
    assert len(devices) == 8, devices
    seen = []
    device_get = jax.device_get

    def spy(tree):  # what `sweep.run` fetches: the outputs of one sharded chunk
        for leaf in jax.tree.leaves(tree):
            seen.append({
                "devices": len(leaf.sharding.device_set),
                "replicated": bool(leaf.sharding.is_fully_replicated),
                "shape": list(leaf.shape),
                "shards": sorted({tuple(s.data.shape) for s in leaf.addressable_shards}),
            })
        return device_get(tree)

    jax.device_get = spy
    fn, proxies = problem()
    sweep.run(fn, proxies, out, chunk_size=12, meta=META, progress=True)
    print(json.dumps({"devices": len(devices), "outputs": seen}))


def _slow(out: str) -> None:
    fn, proxies = problem()

    def post(columns):
        time.sleep(SLOW_SLEEP_S)
        return columns

    sweep.run(fn, proxies, out, chunk_size=SLOW_CHUNK, meta=META, post=post, progress=False)


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    {"devices": _devices, "slow": _slow}[mode](out)
