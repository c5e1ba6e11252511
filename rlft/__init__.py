"""rlft: fine-tune text-to-image diffusion models from preferences and rewards, on one CPU or a Ray cluster.

Its packages and top-level modules, lowest first: each imports only ones above it in this list (lazy imports
inside functions included; tests/test_layers.py checks it, and each package's docstring names what it
imports). Math never imports Ray, MLflow or files.

- `rlft.world`: the tiny world: captioned shapes, their judge, the tiny model, its pretraining and weights.
- `rlft.families`: the model families (SD 1.x, SDXL, SD3, FLUX) behind one `Denoiser`, and their step math.
- `rlft.runs`: what a run keeps: checkpoints, storage, MLflow tracking.
- `rlft.prompts`: prompt sets (the world's captions among them).
- `rlft.zoo`: every model by name: names checked without loading, loading, the random-weight shapes.
- `rlft.diffusion`: the trainable policy (LoRA or full fine-tuning), its adapters, sampling.
- `rlft.rewards`: rewards by name (JPEG, brightness, the world's judge, aesthetic, ImageReward, PickScore).
- `rlft.configs`: one frozen config per job, every field documented and checked; recipes; flags.
- `rlft.epoch`, `rlft.evaluation`: the pieces of an epoch every algorithm shares; the fixed evaluation set.
- `rlft.algorithms`: the losses, D3PO, DRaFT and DDPO (learner and epoch each), the backend interface.
- `rlft.progress`, `rlft.loop`, `rlft.local`: what the driver shows while an epoch runs; the loop's frame
  (resume, evaluate, checkpoint, log); the single-process backend.
- `rlft.distributed`: Ray: the cluster, sampler and scorer actors, Train workers, the Ray backend.
- `rlft.feedback`: people's preferences: batches to label, the labelling page, the epoch over the labels.
- `rlft.training`: where a run trains, chosen once: this process or Ray, sampled or on labels.
- `rlft.plan`: the dry run's plan (parameters counted on the meta device, memory, data, checkpoint size).
- `rlft.job`, `rlft.cli`: what the `rlft` command and the files in jobs/ run: parse (`rlft.configs.flags`,
  recipes), check (the hub, the GPUs), open the run, train, report.
"""
