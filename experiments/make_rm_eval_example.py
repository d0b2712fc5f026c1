"""Make the synthetic example file of `gradflow rm-eval`.

Writes `experiments/rm-eval-example.jsonl` and its packaged copy
`gradflow/experiments/rm-eval-example.jsonl` (identical bytes):

    python experiments/make_rm_eval_example.py

The data are SYNTHETIC, made by gradflow's own simulator, not by a language model:

* 20 prompts x 8 responses; each response has 4 features `phi(x, y) ~ N(0, I)`
  (feature 0 plays the part of "length").
* The policy is a log-linear policy `pi(y | x) = softmax_y(<theta0, phi(x, y)>)`
  (`gradflow.LogLinear`) with `theta0 ~ N(0, I)`, shared by all prompts.
* The ground-truth reward is linear in the features plus noise,
  `r_G = <w_G, phi> + 0.3 eps`, with `w_G ~ N(0, I)` drawn independently of `theta0`.
* Three proxy reward models with different error structures:
  - `rm_noisy`: `r_G` plus Gaussian noise of scale 0.5 on every response
    (`gradflow.perturb.gaussian`);
  - `rm_length_bias`: `r_G + 0.8 phi_0`, a bias towards "long" responses
    (`gradflow.perturb.feature_bias`);
  - `rm_unlikely_errors`: `r_G` plus Gaussian noise of scale 2 on each prompt's 4 least
    likely responses only, exact on the 4 most likely.
* `logprob` imitates a sequence log-likelihood: `log pi(y | x) - c_x`, with a per-prompt
  constant `c_x ~ U(20, 60)` standing for the mass the model puts on responses that were
  not sampled. Renormalising over each prompt's responses (what `gradflow rm-eval` does)
  recovers `log pi(y | x)`.

Deterministic: a fixed seed, computed in float64, values rounded to 4 decimals.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import gradflow as gf
from gradflow import perturb

ROOT = Path(__file__).resolve().parents[1]
TARGETS = (
    ROOT / "experiments" / "rm-eval-example.jsonl",
    ROOT / "gradflow" / "experiments" / "rm-eval-example.jsonl",
)
SEED = 0
PROMPTS, RESPONSES, DIM = 20, 8, 4


def make_records(seed: int = SEED) -> list[dict]:
    """The example's records, one dict per response, in file order."""
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.key(seed), 7)
        phi = jax.random.normal(keys[0], (PROMPTS, RESPONSES, DIM))
        theta0 = jax.random.normal(keys[1], (DIM,))
        policy = gf.LogLinear(phi, theta0)
        logp = policy.log_probs()

        w_true = jax.random.normal(keys[2], (DIM,))
        r_true = phi @ w_true + 0.3 * jax.random.normal(keys[3], (PROMPTS, RESPONSES))

        noisy = perturb.gaussian(keys[4], r_true, scale=0.5, n=1)[0]
        length = jnp.zeros(DIM).at[0].set(1.0)
        biased = perturb.feature_bias(r_true, phi, length, jnp.asarray([0.8]))[0]
        rank = jnp.argsort(jnp.argsort(-logp, axis=1), axis=1)  # 0 = most likely
        very_noisy = perturb.gaussian(keys[5], r_true, scale=2.0, n=1)[0]
        unlikely = jnp.where(rank >= RESPONSES // 2, very_noisy, r_true)

        offset = jax.random.uniform(keys[6], (PROMPTS, 1), minval=20.0, maxval=60.0)
        logprob = logp - offset

        cols = {
            "logprob": logprob,
            "true_reward": r_true,
            "rm_noisy": noisy,
            "rm_length_bias": biased,
            "rm_unlikely_errors": unlikely,
        }
        cols = {k: np.round(np.asarray(v, dtype=np.float64), 4) for k, v in cols.items()}

    records = []
    for x in range(PROMPTS):
        for y in range(RESPONSES):
            rec: dict = {"prompt_id": f"p{x:02d}", "response_id": f"r{y}"}
            rec.update({k: float(v[x, y]) for k, v in cols.items()})
            records.append(rec)
    return records


def to_jsonl(records: list[dict]) -> str:
    """One JSON object per line."""
    return "".join(json.dumps(rec) + "\n" for rec in records)


def main() -> None:
    text = to_jsonl(make_records())
    for path in TARGETS:
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
