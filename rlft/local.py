"""The single-process backend: sampling, scoring and training in this process, no Ray.

It is the reference the Ray backend (rlft/distributed/ray_loop.py) is held to: the same config and seed give
the same numbers. `LocalTrainer` trains (what a run on people's labels needs, rlft/feedback/human.py);
`LocalBackend` also samples, scores and evaluates (what a sampled run's epoch needs); `local_backend` builds
the one a config asks for, and rlft/loop.py's `run_backend` runs it (`train_local`, for a sampled run).
"""

import time
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from torch import Tensor

from rlft.algorithms.backend import EpochInputs, EvalFn, Log, Sampled
from rlft.algorithms.registry import algorithm_of
from rlft.configs import RunConfig, SamplingConfig
from rlft.diffusion.policy import LocalTrained, build_policy
from rlft.diffusion.sampling import encode_prompts
from rlft.epoch import (
    Chunk,
    concat_samples,
    item_order,
    iterate_batches,
    plan_chunks,
    prompts_of,
    sample_chunk,
    stream_generator,
)
from rlft.evaluation import eval_chunks, eval_settings
from rlft.loop import run_backend
from rlft.progress import Progress, counted, progress_for, quiet
from rlft.rewards.registry import get_reward
from rlft.runs.tracking import Tracker


def local_evaluate(
    pipe: StableDiffusionPipeline, cfg: SamplingConfig, progress: Progress | None = None
) -> EvalFn:
    """Scores the pipeline's current policy on the fixed evaluation set, in this process; `progress` counts
    the images (default: shown nowhere)."""
    reward = get_reward(cfg.reward)
    progress = progress or quiet()

    def evaluate() -> tuple[Tensor, Tensor]:
        chunks = eval_chunks(cfg)
        progress.expect("evaluated", cfg.eval_images)
        samples = []
        for chunk in chunks:
            samples.append(sample_chunk(pipe, chunk, eval_settings(cfg)))
            progress.advance("evaluated", len(chunk.prompts))
        images = torch.cat([s["images"] for s in samples])
        prompts = [p for chunk in chunks for p in chunk.prompts]
        with torch.no_grad():
            return reward.fn(images, prompts).float(), images

    return evaluate


class LocalTrainer:
    """Trains `learner` (built on `pipe`, whose UNet is the policy) with `train_fn`, the algorithm's epoch
    over its batches."""

    def __init__(self, cfg: RunConfig, pipe, learner, train_fn, progress: Progress | None = None):
        self.cfg, self.pipe, self.learner, self.train_fn = cfg, pipe, learner, train_fn
        self.progress = progress or quiet()
        self.trained = LocalTrained(learner.policy, learner.optimizer)

    def train(self, epoch: int, prompts: list[str], items: dict[str, Tensor]):
        start = time.perf_counter()
        device = self.pipe.device
        items = {k: v.to(device) for k, v in items.items()}
        order = item_order(len(items["prompt"]), self.cfg, epoch)
        self.progress.expect("trained", len(order))
        batches = iterate_batches(items, self.cfg.batch_size, order)
        batches = counted(batches, lambda count: self.progress.advance("trained", count))
        generator = stream_generator(self.cfg.seed, epoch, "train", 0, device)
        cond, uncond = encode_prompts(self.pipe, prompts)
        inputs = EpochInputs(cond, uncond, generator, prompts)
        metrics, rewards = self.train_fn(self.learner, batches, inputs)
        return metrics, rewards, {"time_train_s": time.perf_counter() - start}


class LocalBackend(LocalTrainer):
    """A `LocalTrainer` that also samples with `pipe`, scores with the config's reward and evaluates."""

    def __init__(self, cfg: SamplingConfig, pipe, learner, train_fn, progress: Progress | None = None):
        super().__init__(cfg, pipe, learner, train_fn, progress)
        self.reward = get_reward(cfg.reward)
        self.evaluate = local_evaluate(pipe, cfg, self.progress)

    def sample(self, epoch: int, prompts: list[str], score: bool = True) -> Sampled:
        start = time.perf_counter()
        chunks = plan_chunks(prompts, self.cfg.sample_batch, self.cfg.seed, epoch)
        settings = self.cfg.sampling_settings()
        self.progress.expect("sampled", len(prompts) * settings["group_size"])
        parts = []
        with self.trained.sampling() as staleness:
            for chunk in chunks:
                parts.append(sample_chunk(self.pipe, chunk, settings))
                self.progress.advance("sampled", len(parts[-1]["group"]))
        samples = concat_samples(parts)
        sampled = time.perf_counter()
        rewards = None
        if score:
            with torch.no_grad():
                texts = prompts_of(prompts, samples["group"])
                rewards = self.reward.fn(samples["images"], texts).float()
        timing = {"time_sample_s": sampled - start, "time_score_s": time.perf_counter() - sampled}
        return Sampled(samples, rewards, lambda: samples["images"], timing, staleness)

    def prefetch(self, epoch: int, prompts: list[str]) -> None:
        """One process has no second device to sample on while it trains: it only records the weights the
        next epoch samples with, so that a pipelined run gives the Ray pipeline's numbers."""
        self.trained.sampling_weights = self.learner.policy.state_dict()

    def sample_images(self, chunk: Chunk) -> Tensor:
        settings = self.cfg.sampling_settings() | {"skip_last": 0}
        return sample_chunk(self.pipe, chunk, settings)["images"]


def local_backend(cfg: RunConfig, progress: Progress | None = None) -> LocalTrainer:
    """The config's algorithm ready to train in this process: a `LocalBackend` for a sampled run, a
    `LocalTrainer` for one on fixed items (people's labels)."""
    pipe, policy = build_policy(cfg)
    algorithm = algorithm_of(cfg)
    learner = algorithm.make_learner(cfg, pipe, policy)
    kind = LocalBackend if isinstance(cfg, SamplingConfig) else LocalTrainer
    return kind(cfg, pipe, learner, algorithm.train, progress)


def train_local(
    cfg: SamplingConfig,
    run_dir: Path,
    tracker: Tracker | None = None,
    log: Log = print,
    progress: Progress | None = None,
) -> list[dict[str, float]]:
    """Train the config's algorithm in this process; the per-epoch metrics, as `run_epochs` gives.
    `progress`: what shows the work within an epoch (default: a bar on a terminal, lines in a log)."""
    backend = local_backend(cfg, progress or progress_for(log))
    return run_backend(cfg, run_dir, backend, tracker, log)
