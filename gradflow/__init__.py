"""gradflow: policy-gradient dynamics under imperfect rewards, in JAX."""

from . import (
    design as design,
    metrics as metrics,
    perturb as perturb,
    policies as policies,
    rm_eval as rm_eval,
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
