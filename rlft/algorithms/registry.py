"""The algorithms by name: a config's `algorithm` picks its learner and its epoch
(rlft/algorithms/backend.py)."""

from rlft.algorithms.backend import Algorithm
from rlft.algorithms.d3po import D3PO
from rlft.algorithms.ddpo import DDPO
from rlft.algorithms.draft import DRAFT

ALGORITHMS = {algorithm.name: algorithm for algorithm in (D3PO, DRAFT, DDPO)}


def algorithm_of(cfg) -> Algorithm:
    """The algorithm a config (D3POConfig, DRaFTConfig, DDPOConfig) trains."""
    return ALGORITHMS[cfg.algorithm]
