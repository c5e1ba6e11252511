"""rlft: fine-tune text-to-image diffusion models from preferences and rewards, on one CPU or a Ray cluster.

Packages, lowest first; a module imports only from its own layer or the ones below it (math never imports
Ray, MLflow or files):

- `rlft.diffusion`: the models, the trainable policy and its adapters, DDIM with log-probabilities, sampling,
  the tiny model's world and its pretraining.
- `rlft.rewards`: rewards by name (JPEG, brightness, the world's judge, aesthetic, ImageReward, PickScore).
- `rlft.prompts`, `rlft.runs`: prompt sets; a run's config, checkpoints, storage and tracking.
- `rlft.epoch`, `rlft.evaluation`: the pieces of an epoch every algorithm shares; the fixed evaluation set.
- `rlft.algorithms`: the losses, D3PO, DRaFT and DDPO (learner and epoch each), the backend interface.
- `rlft.loop`, `rlft.local`, `rlft.progress`: the loop's frame (resume, evaluate, checkpoint, log); the
  single-process backend; what the driver shows while an epoch runs.
- `rlft.distributed`: Ray: the cluster, sampler and scorer actors, Train workers, the Ray backend.
- `rlft.feedback`: people's preferences: batches to label, the labelling page, training on the labels.
- `rlft.plan`: the dry run's plan (parameters counted on the meta device, memory, data, checkpoint size).
- `rlft.job`, `rlft.cli`: what the `rlft` command and the files in jobs/ run: parse (`rlft.configs.flags`,
  recipes), check (the hub, the GPUs), open the run, train, report.
"""
