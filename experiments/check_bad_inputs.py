"""The bad inputs and interruptions of issue 14, run against a gradflow source tree.

    python experiments/check_bad_inputs.py SRC WORKDIR

`SRC` is a checkout (its `gradflow/` and `experiments/` are used), `WORKDIR` an empty
scratch folder. The script itself needs gradflow installed (it writes the configs with
`gradflow.studies._base.dumps`). Each case prints one line: the exit status and the first line a user
reads. Run it on an old checkout (`git archive <commit> | tar -x -C old`) and on the
current one to compare.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from gradflow.studies._base import dumps

SRC, WORK = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
WORK.mkdir(parents=True, exist_ok=True)
os.chdir(WORK)
ENV = {**os.environ, "PYTHONPATH": str(SRC), "JAX_PLATFORMS": "cpu"}
PY = sys.executable

def snap(d):
    d = Path(d)
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()} if d.exists() else {}

def cli(*args, timeout=900):
    t = time.perf_counter()
    p = subprocess.run([PY, "-m", "gradflow.cli", *map(str, args)], env=ENV, capture_output=True, text=True, timeout=timeout)
    return p, time.perf_counter() - t

def py(code, timeout=600):
    p = subprocess.run([PY, "-c", code], env=ENV, capture_output=True, text=True, timeout=timeout)
    return p

def err_line(p):
    lines = [line for line in p.stderr.strip().splitlines() if line.strip()]
    tb = "Traceback" in p.stderr
    last = lines[-1] if lines else ""
    return ("traceback: " if tb else "") + last[:150]


base = tomllib.loads((SRC / "experiments" / "categorization-map.toml").read_text())
base["quick"]["proxies"]["num"] = [5, 5]
base["quick"]["method"]["steps"] = 200
def cfg(name, **edits):
    raw = json.loads(json.dumps(base))
    for k, x in edits.items():
        *tables, key = k.split("__")
        table = raw
        for t in tables:
            table = table[t]
        table[key] = x
    Path(f"{name}.toml").write_text(dumps(raw))
    return f"{name}.toml"

rows = []


def report(case, outcome):
    rows.append((case, outcome))
    print(f"{case}: {outcome}", flush=True)



# 1. a rejected sweep damages its folder
c = cfg("small")
p, _ = cli("sweep", c, "--quick", "--out", "sw", "--no-plot")
before = snap("sw")
c2 = cfg("small", analysis__targets=[0.95])
p, _ = cli("sweep", c2, "--quick", "--out", "sw", "--no-plot")
changed = [k for k in set(before) | set(snap("sw")) if before.get(k) != snap("sw").get(k)]
report("sweep with a changed config into another sweep's folder", f"rc {p.returncode}; files changed: {changed or 'none'}; {err_line(p)}")
# 2/3. provenance, quick vs full
report("result folder records what made it", "run.json present" if Path("sw/run.json").exists() else "no run.json")
ref = (Path("sw") / "reference.json").read_text()
report("reference.json standard JSON", "has Infinity" if "Infinity" in ref else "standard")
# 4/5. unusable --out
Path("afile").write_text("x")
for out in ["afile", "/proc/gf/out"]:
    p, dt = cli("sweep", c, "--quick", "--out", out, "--no-plot")
    report(f"sweep --out {out}", f"rc {p.returncode} after {dt:.1f} s; {err_line(p)}")
# 6. directory as config
p, _ = cli("sweep", ".", "--quick")
report("a folder as the config", f"rc {p.returncode}; {err_line(p)}")
# 7. steps 10**12
p, dt = cli("sweep", cfg("steps", method__steps=10**12, quick__method__steps=10**12), "--quick", "--out", "o7", "--no-plot", timeout=120)
report("steps = 10**12 in a config", f"rc {p.returncode} after {dt:.1f} s; {err_line(p)}; out exists: {Path('o7').exists()}")
# 11. learning_rate 1e6
p, dt = cli("sweep", cfg("lr", method__learning_rate=1e6), "--quick", "--out", "o11", "--no-plot")
report("learning_rate = 1e6 in a sweep config", f"rc {p.returncode}; {err_line(p) if p.returncode else p.stdout.strip().splitlines()[-3][:150]}")
# 13. target above the max, config
p, dt = cli("sweep", cfg("tgt", analysis__targets=[5.0]), "--quick", "--out", "o13", "--no-plot")
report("targets = [5.0] in a sweep config", f"rc {p.returncode}; {err_line(p) if p.returncode else 'accepted'}")
# 8/15. rm-eval
for val, name in [("1" * 400, "400-digit integer"), ("1e308", "1e308")]:
    lines = [json.dumps({"prompt_id": 0, "response_id": i, "logprob": -1.0, "true_reward": float(i), "rm_a": 0.5}) for i in range(3)]
    lines[1] = lines[1].replace('"rm_a": 0.5', f'"rm_a": {val}')
    Path("rec.jsonl").write_text("\n".join(lines) + "\n")
    p, _ = cli("rm-eval", "rec.jsonl", "--out", f"rm_{name[:4]}")
    out = err_line(p) if p.returncode else [x for x in p.stdout.splitlines() if "rm_a" in x][-1][:150]
    report(f"rm-eval with a {name}", f"rc {p.returncode}; {out}")
# library cases
lib = r'''
import math, jax, jax.numpy as jnp, optax, gradflow as gf
policy = gf.TabularSoftmax.from_probs(jnp.array([0.05, 0.5, 0.15, 0.15, 0.15]))
r = jnp.array([1.0, 0.8, -1.0, -1.0, -1.0])
def show(label, f):
    try: out = f()
    except Exception as e: out = type(e).__name__ + ": " + str(e).strip().splitlines()[-1][:140] if "Tracer" not in str(e) and "Traceback" not in str(e) else type(e).__name__ + " (" + ("shows a tracer" if "Tracer" in str(e) else "") + ", " + str(len(str(e))) + " chars)"
    print(label + ": " + str(out))
show("optax.sgd(1e30)", lambda: "status " + gf.status_name(gf.solve(policy, reward=r, method=gf.GradientAscent(optax.sgd(1e30), 10)).status))
show("optax.sgd(-0.1)", lambda: "accepted; final true reward %.3f" % float(gf.solve(policy, reward=r, method=gf.GradientAscent(optax.sgd(-0.1), 100)).true_reward[-1]))
show("targets=(5.0,) in gf.solve", lambda: "accepted; time %s" % float(gf.time_to_reward(gf.solve(policy, reward=r, method=gf.GradientFlow(), t1=10.0, targets=(5.0,)), 5.0)))
sol = gf.solve(policy, reward=r, method=gf.GradientFlow(), t1=10.0, targets=(0.9,))
show("gf.time_to_reward(sol, nan)", lambda: float(gf.time_to_reward(sol, math.nan)))
f = jax.jit(jax.vmap(lambda t1: gf.solve(policy, reward=r, method=gf.GradientFlow(), t1=t1).status))
show("t1 = -1 under jax.jit(jax.vmap)", lambda: f(jnp.array([1.0, -1.0])))
'''
p = py(lib)
for line in p.stdout.strip().splitlines():
    case, _, out = line.partition(": ")
    report(case, out)
# 17. conveniences
p, dt = cli("--help")
report("gradflow --help", f"{dt:.2f} s")
p = subprocess.run([PY, "-m", "gradflow", "--version"], env=ENV, capture_output=True, text=True)
report("python -m gradflow --version", p.stdout.strip() or err_line(p))
# 16. Ctrl-C
c3 = cfg("slow", sweep__chunk_size=1, quick__method__steps=200000)
proc = subprocess.Popen([PY, "-c", "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); from gradflow.cli import main; sys.exit(main(sys.argv[1:]))", "sweep", c3, "--quick", "--out", "o16", "--no-plot"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
t = time.monotonic()
while not list(Path("o16/summary.parquet").glob("part-*")) and time.monotonic() - t < 300:
    time.sleep(0.2)
proc.send_signal(signal.SIGINT)
t = time.monotonic()
_, e = proc.communicate(timeout=120)
dt = time.monotonic() - t
last = [x for x in e.strip().splitlines() if x.strip()][-1][:160]
report("Ctrl-C during a sweep", f"exit {proc.returncode} after {dt:.1f} s; traceback: {'Traceback' in e}; last line: {last}")
Path("cases.json").write_text(json.dumps(rows, indent=1))
