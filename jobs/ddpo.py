"""DDPO: fine-tune a diffusion model on a reward with policy gradients, the baseline D3PO and DRaFT are
compared with (Black et al., arXiv 2305.13301).

Sampler actors draw several samples of each prompt from independent noise (or sharing it, with
--shared-noise), keeping every step's log-probability; scorer actors score them; the rewards become
advantages (per prompt, as DDPO does, or within each prompt's samples with --advantages group); Ray Train
workers apply the PPO-clip loss to every (sample, timestep) item, shuffled through Ray Data. With no flags it
trains the pretrained tiny model on JPEG compressibility, as jobs/d3po.py does, judged on the same fixed
evaluation set. Runs checkpoint every epoch under runs/<run-name>, log to MLflow and resume under the same
--run-name; the adapter ends in runs/<run-name>/adapter, in diffusers' LoRA format.
"""

from rlft.configs import DDPOConfig
from rlft.job import run_job

if __name__ == "__main__":
    run_job(DDPOConfig, "ddpo", __doc__)
