"""Ray: joining or starting the cluster and checking its resources (`cluster`), sampler and scorer actors
(`actors`, `scorer`), Ray Train workers serving the learner (`train_workers`, fed by `ray_trainer`), and the
Ray backend of the epoch (`ray_loop`). Nothing it imports imports Ray.
Imports from rlft: algorithms, configs, diffusion, epoch, evaluation, loop, progress, rewards and runs."""
