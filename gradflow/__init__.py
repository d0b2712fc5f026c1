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
    from ._analysis import (
        Stall as Stall,
        StallCriteria as StallCriteria,
        Stalls as Stalls,
        find_stalls as find_stalls,
        reward_variance as reward_variance,
        time_to_reward as time_to_reward,
        true_reward_rate as true_reward_rate,
    )
    from ._categorize import (
        Categorization as Categorization,
        categorize as categorize,
        proxy_row as proxy_row,
    )
    from ._dynamics import (
        AbstractDiscreteMethod as AbstractDiscreteMethod,
        AbstractMethod as AbstractMethod,
        GradientAscent as GradientAscent,
        GradientFlow as GradientFlow,
    )
    from ._estimators import (
        GRPO as GRPO,
        PPO as PPO,
        RLOO as RLOO,
        AbstractSampledMethod as AbstractSampledMethod,
        Reinforce as Reinforce,
    )
    from ._objective import Regularization as Regularization
    from ._proxy_design import (
        ProxyDesign as ProxyDesign,
        design_proxy as design_proxy,
        proxy_objective as proxy_objective,
        sensitivity as sensitivity,
    )
    from ._seeds import SeedSummary as SeedSummary, summarize_seeds as summarize_seeds
    from ._solve import SaveAt as SaveAt, Solution as Solution, solve as solve
    from ._status import Status as Status, status_code as status_code, status_name as status_name
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
    "Stall": "._analysis",
    "StallCriteria": "._analysis",
    "Stalls": "._analysis",
    "find_stalls": "._analysis",
    "reward_variance": "._analysis",
    "time_to_reward": "._analysis",
    "true_reward_rate": "._analysis",
    "Categorization": "._categorize",
    "categorize": "._categorize",
    "proxy_row": "._categorize",
    "AbstractDiscreteMethod": "._dynamics",
    "AbstractMethod": "._dynamics",
    "GradientAscent": "._dynamics",
    "GradientFlow": "._dynamics",
    "GRPO": "._estimators",
    "PPO": "._estimators",
    "RLOO": "._estimators",
    "AbstractSampledMethod": "._estimators",
    "Reinforce": "._estimators",
    "Regularization": "._objective",
    "ProxyDesign": "._proxy_design",
    "design_proxy": "._proxy_design",
    "proxy_objective": "._proxy_design",
    "sensitivity": "._proxy_design",
    "SeedSummary": "._seeds",
    "summarize_seeds": "._seeds",
    "SaveAt": "._solve",
    "Solution": "._solve",
    "solve": "._solve",
    "Status": "._status",
    "status_code": "._status",
    "status_name": "._status",
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
