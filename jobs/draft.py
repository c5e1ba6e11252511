"""DRaFT: fine-tune a diffusion model by backpropagating a differentiable reward through sampling.

`--variant draft-k --k K` (gradient through the last K steps), `--variant draft-lv --lv-copies n`,
`--variant full`, `--variant refl` (ReFL-style: one random late step, its x_0 prediction scored) or
`--variant alignprop` (AlignProp-style: a random K per optimizer step). Sampler actors run the steps that
need no gradient; Ray Train workers run the rest with gradient, decode, score and update. With no flags it
starts a local Ray and runs DRaFT-K with K = 1 on the pretrained tiny model and the differentiable
smoothness reward, judged on a fixed evaluation set, and ends with a before/after grid. Each run checkpoints
every epoch under runs/<run-name> and logs to MLflow; the same --run-name again resumes it.
"""

from rlft.configs import DRaFTConfig
from rlft.job import run_job

if __name__ == "__main__":
    run_job(DRaFTConfig, "draft", __doc__)
