"""Policies: the interface the methods rely on, and its implementations."""

from ._autoregressive import (
    MAX_SEQUENCES as MAX_SEQUENCES,
    AbstractTokenHead as AbstractTokenHead,
    Autoregressive as Autoregressive,
    TokenFeatures as TokenFeatures,
    TokenTable as TokenTable,
    sequence_reward as sequence_reward,
    sequences as sequences,
)
from ._base import (
    AbstractPolicy as AbstractPolicy,
    AbstractScorePolicy as AbstractScorePolicy,
    Linearization as Linearization,
)
from ._neural import NeuralPolicy as NeuralPolicy
from ._softmax import (
    InexactFitWarning as InexactFitWarning,
    LogLinear as LogLinear,
    TabularSoftmax as TabularSoftmax,
)
