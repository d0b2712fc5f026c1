"""gradflow: policy-gradient dynamics under imperfect rewards, in JAX.

The names below are imported on first use (PEP 562), so that `gradflow --help` and
`gradflow --version` answer without loading JAX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the static view, for type checkers and the API docs
    from . import (
        design as design,
        metrics as metrics,
        perturb as perturb,
        policies as policies,
        rm_eval as rm_eval,
        studies as studies,
        sweep as sweep,
    )
    from ._analysis.categorize import (
        Categorization as Categorization,
        categorize as categorize,
        proxy_row as proxy_row,
    )
    from ._analysis.curves import (
        find_stalls as find_stalls,
        reward_variance as reward_variance,
        time_to_reward as time_to_reward,
        true_reward_rate as true_reward_rate,
    )
    from ._analysis.proxy_design import (
        ProxyDesign as ProxyDesign,
        design_proxy as design_proxy,
        proxy_objective as proxy_objective,
        sensitivity as sensitivity,
    )
    from ._analysis.seeds import SeedSummary as SeedSummary, summarize_seeds as summarize_seeds
    from ._engine.estimators import (
        GRPO as GRPO,
        PPO as PPO,
        RLOO as RLOO,
        AbstractSampledMethod as AbstractSampledMethod,
        Reinforce as Reinforce,
    )
    from ._engine.methods import (
        AbstractDiscreteMethod as AbstractDiscreteMethod,
        AbstractMethod as AbstractMethod,
        GradientAscent as GradientAscent,
        GradientFlow as GradientFlow,
    )
    from ._engine.objective import Regularization as Regularization
    from ._engine.solve import SaveAt as SaveAt, Solution as Solution, solve as solve
    from ._engine.status import (
        Status as Status,
        status_code as status_code,
        status_name as status_name,
    )
    from ._engine.tracking import Stall as Stall, StallCriteria as StallCriteria, Stalls as Stalls
    from .policies import (
        AbstractPolicy as AbstractPolicy,
        AbstractScorePolicy as AbstractScorePolicy,
        AbstractTokenHead as AbstractTokenHead,
        Autoregressive as Autoregressive,
        InexactFitWarning as InexactFitWarning,
        Linearization as Linearization,
        LogLinear as LogLinear,
        NeuralPolicy as NeuralPolicy,
        TabularSoftmax as TabularSoftmax,
        TokenFeatures as TokenFeatures,
        TokenTable as TokenTable,
        sequence_reward as sequence_reward,
    )

__version__ = "0.1.0"

_SUBMODULES = frozenset(('design', 'metrics', 'perturb', 'policies', 'rm_eval', 'studies', 'sweep'))
# name -> the private module that defines it
_NAMES = {
    "Stall": "._engine.tracking",
    "StallCriteria": "._engine.tracking",
    "Stalls": "._engine.tracking",
    "find_stalls": "._analysis.curves",
    "reward_variance": "._analysis.curves",
    "time_to_reward": "._analysis.curves",
    "true_reward_rate": "._analysis.curves",
    "Categorization": "._analysis.categorize",
    "categorize": "._analysis.categorize",
    "proxy_row": "._analysis.categorize",
    "AbstractDiscreteMethod": "._engine.methods",
    "AbstractMethod": "._engine.methods",
    "GradientAscent": "._engine.methods",
    "GradientFlow": "._engine.methods",
    "GRPO": "._engine.estimators",
    "PPO": "._engine.estimators",
    "RLOO": "._engine.estimators",
    "AbstractSampledMethod": "._engine.estimators",
    "Reinforce": "._engine.estimators",
    "Regularization": "._engine.objective",
    "ProxyDesign": "._analysis.proxy_design",
    "design_proxy": "._analysis.proxy_design",
    "proxy_objective": "._analysis.proxy_design",
    "sensitivity": "._analysis.proxy_design",
    "SeedSummary": "._analysis.seeds",
    "summarize_seeds": "._analysis.seeds",
    "SaveAt": "._engine.solve",
    "Solution": "._engine.solve",
    "solve": "._engine.solve",
    "Status": "._engine.status",
    "status_code": "._engine.status",
    "status_name": "._engine.status",
    "AbstractPolicy": ".policies",
    "AbstractScorePolicy": ".policies",
    "AbstractTokenHead": ".policies",
    "Autoregressive": ".policies",
    "InexactFitWarning": ".policies",
    "Linearization": ".policies",
    "LogLinear": ".policies",
    "NeuralPolicy": ".policies",
    "TabularSoftmax": ".policies",
    "TokenFeatures": ".policies",
    "TokenTable": ".policies",
    "sequence_reward": ".policies",
}
__all__ = sorted(_SUBMODULES | set(_NAMES))


def __getattr__(name: str):
    if name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    elif name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name], __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
