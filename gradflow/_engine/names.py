"""The one table of method names: what a config, the command line or a study calls a
method (`"sgd"`, `"flow"`, `"rloo"`, ...) and how to build it.

[`METHODS`][gradflow._engine.names.METHODS] maps each name to its
[`MethodEntry`][gradflow._engine.names.MethodEntry] (class, display label, constructor); the
subsets below are derived from it, never listed by hand:

- `EXACT_NAMES`: the methods that follow the exact gradient (`sgd`, `flow`);
- `SAMPLED_NAMES`: the sampled estimators, which need a PRNG key (the class's
  `needs_key`);
- `GROUP_NAMES`: the estimators whose baseline is the rest of the group of samples drawn
  for a prompt (they need `samples >= 2`).

Adding an estimator: its class (in `estimators.py`) and one entry here; configs, the
command line and the studies take their names from this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import optax

from .estimators import GRPO, PPO, RLOO, Reinforce
from .methods import AbstractMethod, GradientAscent, GradientFlow


@dataclass(frozen=True)
class MethodOptions:
    """The options a config can give a method (each method reads those it has).

    - `learning_rate`, `steps`: SGD (`optax.sgd`) and the number of updates (discrete
      methods).
    - `samples`: draws per prompt per step (sampled methods).
    - `reinforce_baseline`; `grpo_normalize_std`; `ppo_epochs`, `ppo_clip`: as the
      classes' fields of those names.
    - `rtol`, `atol`, `max_steps`: the flow's step-size controller (`None`: the
      class's default).
    """

    learning_rate: float = 0.1
    steps: int = 50000
    samples: int = 4
    reinforce_baseline: str = "none"
    grpo_normalize_std: bool = True
    ppo_epochs: int = 4
    ppo_clip: float = 0.2
    rtol: float | None = None
    atol: float | None = None
    max_steps: int | None = None


def _flow(o: MethodOptions) -> GradientFlow:
    return GradientFlow(rtol=o.rtol, atol=o.atol, **({} if o.max_steps is None else {"max_steps": o.max_steps}))


@dataclass(frozen=True)
class MethodEntry:
    """One method of the table: its class, its `label` in tables and figures, its
    constructor from [`MethodOptions`][gradflow._engine.names.MethodOptions], and whether its
    baseline is the rest of a `group` of samples."""

    cls: type[AbstractMethod]
    label: str
    build: Callable[[MethodOptions], AbstractMethod]
    group: bool = False

    @property
    def sampled(self) -> bool:
        """Whether the method samples (and so needs a PRNG key)."""
        return bool(self.cls.needs_key)


METHODS: dict[str, MethodEntry] = {
    "sgd": MethodEntry(GradientAscent, "SGD", lambda o: GradientAscent(optax.sgd(o.learning_rate), o.steps)),
    "flow": MethodEntry(GradientFlow, "flow", _flow),
    "reinforce": MethodEntry(Reinforce, "REINFORCE", lambda o: Reinforce(
        optax.sgd(o.learning_rate), o.steps, samples=o.samples, baseline=o.reinforce_baseline)),
    "rloo": MethodEntry(RLOO, "RLOO", lambda o: RLOO(optax.sgd(o.learning_rate), o.steps, samples=o.samples),
                        group=True),
    "grpo": MethodEntry(GRPO, "GRPO", lambda o: GRPO(optax.sgd(o.learning_rate), o.steps, samples=o.samples,
                                                     normalize_std=o.grpo_normalize_std), group=True),
    "ppo": MethodEntry(PPO, "PPO", lambda o: PPO(optax.sgd(o.learning_rate), o.steps, samples=o.samples,
                                                 epochs=o.ppo_epochs, clip=o.ppo_clip)),
}
"""Every method a config can name: `{name: MethodEntry}`."""

METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
EXACT_NAMES: tuple[str, ...] = tuple(n for n, m in METHODS.items() if not m.sampled)
SAMPLED_NAMES: tuple[str, ...] = tuple(n for n, m in METHODS.items() if m.sampled)
GROUP_NAMES: tuple[str, ...] = tuple(n for n, m in METHODS.items() if m.group)


def make_method(name: str, **options) -> AbstractMethod:
    """The method a config calls `name`, with SGD at the given learning rate for the
    discrete methods (`sgd` is exact-gradient SGD, `flow` the adaptive gradient flow; the
    others are the sampled estimators).

    **Arguments:**

    - `name`: one of `METHOD_NAMES`.
    - `options`: fields of [`MethodOptions`][gradflow._engine.names.MethodOptions]
      (`learning_rate`, `steps`, `samples`, ...); each method uses those it has.

    **Returns:** the method.

    **Raises:** `ValueError` for an unknown name.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {list(METHODS)}.")
    return METHODS[name].build(MethodOptions(**options))
