"""D3PO: fine-tune a diffusion model from preferences between samples that share their initial noise.

Sampler actors draw groups of samples sharing x_T with the current LoRA, scorer actors rank them by the
reward, and Ray Train workers apply the per-step DPO loss against the adapter-off reference to every
(pair, timestep) item, shuffled through Ray Data. With no flags it starts a local Ray and trains the
pretrained tiny model (shipped in the package; captioned shapes) on JPEG compressibility, one line per
epoch, judged on a fixed evaluation set, and ends with a before/after grid.
`ray job submit --working-dir . -- python jobs/d3po.py` runs the same file on a cluster. Each run
checkpoints every epoch under runs/<run-name> and logs to MLflow; the same --run-name again resumes it. The
adapter ends in runs/<run-name>/adapter, in diffusers' LoRA format.
"""

from rlft.configs import D3POConfig
from rlft.job import run_job

if __name__ == "__main__":
    run_job(D3POConfig, "d3po", __doc__)
