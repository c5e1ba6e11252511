"""Run configurations: one frozen dataclass per job, every field documented (tyro turns them into `--help`
and flags) and checked on construction, so a bad value raises ValueError naming the field before any model
is built. Defaults run the embedded tiny model on a CPU in minutes; the paper values for Stable Diffusion 1.5
are noted where they differ.
Imports from rlft: prompts, rewards, runs and zoo."""

from rlft.configs.base import RunConfig
from rlft.configs.d3po import D3POConfig
from rlft.configs.ddpo import DDPOConfig
from rlft.configs.draft import DRaFTConfig
from rlft.configs.sampling import SamplingConfig

__all__ = ["D3POConfig", "DDPOConfig", "DRaFTConfig", "RunConfig", "SamplingConfig"]
