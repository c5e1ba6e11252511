"""The Ray pipeline: sampler and scorer actors, a Ray Data shuffle, Ray Train workers; one epoch at a time,
or, pipelined (`--pipeline on`), the next epoch's chunks sampled while this epoch trains.

The driver owns the loop (rlft/loop.py's `run_epochs`: resume, one line per epoch, checkpoint, MLflow).
Per epoch: the prompts are cut into chunks that the samplers take in turn (each chunk has its own noise
seed, so the numbers do not depend on how many samplers there are); scorers score each chunk's images as it
arrives; D3PO pairs are formed from the reward order; the epoch's items become a Ray Dataset, globally
shuffled with the epoch's seed and split into equal shares, one per train worker; the workers train and
rank 0 publishes the new weights, which reach every sampler through one object-store reference.
Pipelined, the next epoch's chunks go to the samplers before the workers start, with the weights the
workers start from (`RayBackend.prefetch`); each sampler loads newer weights with its next call.
While an epoch runs the driver shows its progress (rlft/progress.py): the images of each chunk as it
finishes, and the items the workers say they have trained (rlft/distributed/train_workers.py).
`RayTrainer` (rlft/distributed/ray_trainer.py) is the training side alone (a run on people's labels: its
fixed pairs go through the same shuffle to the same workers, and no sampler starts); `RayBackend` adds the
samplers and scorers; `ray_backend` starts and stops either.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
from torch import Tensor

from rlft.algorithms.backend import Log, Sampled
from rlft.configs import RunConfig, SamplingConfig
from rlft.distributed.actors import Weights
from rlft.distributed.launch import Launched, launch
from rlft.distributed.ray_trainer import RayTrained, RayTrainer
from rlft.epoch import Chunk, chunk_prompts, concat_samples, plan_chunks
from rlft.evaluation import eval_chunks, eval_settings
from rlft.loop import run_backend
from rlft.progress import Progress, progress_for, quiet
from rlft.runs.tracking import Tracker


def wait_counted(refs: list, sizes: list[int], progress: Progress, phase: str) -> list:
    """ray.get, each reference's size (its chunk's images) counted in `progress` as it finishes."""
    progress.expect(phase, sum(sizes))
    size_of, pending = dict(zip(refs, sizes, strict=True)), list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
        progress.advance(phase, sum(size_of[ref] for ref in ready))
    return ray.get(refs)


def wait(
    refs: list, label: str, log: Log, every_s: float = 30.0, timeout_s: float | None = None, field: str = ""
) -> list:
    """ray.get, with a line every `every_s` seconds while a phase is still running; after `timeout_s` a
    TimeoutError naming `field` (actors the cluster never finds room for would otherwise wait forever)."""
    pending, start = list(refs), time.perf_counter()
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=every_s)
        waited = time.perf_counter() - start
        if pending:
            log(f"  {label}: {len(refs) - len(pending)}/{len(refs)} after {waited:.0f} s")
            if timeout_s is not None and waited > timeout_s:
                raise TimeoutError(
                    f"{field}: {len(pending)} of {len(refs)} did not start within ready_timeout_s="
                    f"{timeout_s:g} s; the cluster has no room for them (see `ray status`)"
                )
    return ray.get(refs)


class RayBackend(RayTrainer):
    """A `RayTrainer` whose samplers and scorers (actors) sample and score chunk by chunk; rank 0's new
    weights reach every sampler through one object reference."""

    def __init__(
        self,
        cfg: SamplingConfig,
        trained: RayTrained,
        samplers,
        scorers,
        log: Log,
        progress: Progress | None = None,
    ):
        super().__init__(cfg, trained, log, progress)
        self.samplers, self.scorers = samplers, scorers
        self.prefetched: tuple[int, list[str], SamplingCalls] | None = None  # (epoch, prompts, calls)

    def sample(self, epoch: int, prompts: list[str], score: bool = True) -> Sampled:
        weights, staleness = self.trained.for_sampling()
        prefetched, self.prefetched = self.prefetched, None
        if prefetched is not None and prefetched[:2] == (epoch, prompts) and score:
            calls = prefetched[2]  # sampled while the last epoch trained
        else:
            calls = launch_sampling(self.cfg, epoch, prompts, self.samplers, self.scorers, weights, score)
        samples, rewards, images, timing = collect(calls, self.log, self.progress)
        return Sampled(samples, rewards, lambda: torch.cat(ray.get(images)), timing, staleness)

    def prefetch(self, epoch: int, prompts: list[str]) -> None:
        """Send the epoch's chunks to the samplers now, with the current weights: they sample and score
        while the train workers train; none after the last epoch (only its weights are kept)."""
        weights = self.trained.keep_for_sampling()
        if epoch < self.cfg.epochs:
            calls = launch_sampling(self.cfg, epoch, prompts, self.samplers, self.scorers, weights, True)
            self.prefetched = (epoch, prompts, calls)

    def sample_images(self, chunk: Chunk) -> Tensor:
        sampler = self.samplers[0].sample.options(num_returns=2)
        return ray.get(sampler.remote(chunk, self.trained.weights, skip_last=0))[1]

    def evaluate(self) -> tuple[Tensor, Tensor]:
        """The samplers' current weights on the fixed evaluation set: its chunks over the samplers in turn,
        each chunk's images to a scorer as soon as sampled (with no scorers, scored by their sampler)."""
        chunks, settings = eval_chunks(self.cfg), eval_settings(self.cfg)
        prompts = [chunk.prompts for chunk in chunks]  # one image per prompt
        weights = self.trained.weights
        calls = sample_chunks(chunks, prompts, self.samplers, self.scorers, weights, True, **settings)
        images = wait_counted(calls.images, calls.sizes, self.progress, "evaluated")
        return torch.cat(wait(calls.rewards, "scoring the evaluation set", self.log)), torch.cat(images)


@contextmanager
def ray_backend(
    cfg: RunConfig,
    run_dir: Path,
    log: Log = print,
    progress: Progress | None = None,
    launched: Launched | None = None,
) -> Iterator[RayTrainer]:
    """The config's algorithm ready to train on Ray: a `RayBackend` for a sampled run, a `RayTrainer` for one
    on fixed items (people's labels). `launched`: the actors `rlft.distributed.launch.launch` started for this
    config (started here when None); all stopped when the block ends."""
    launched = launched or launch(cfg, run_dir, log)
    samplers, scorers, workers = launched.samplers, launched.scorers, launched.workers
    try:
        workers.wait_started()
        trained = RayTrained(workers, samplers)
        workers.publish()
        trained.fetch()
        wait(
            [s.load_weights.remote(trained.weights) for s in samplers],
            "starting samplers",
            log,
            timeout_s=cfg.ready_timeout_s,
            field="samplers",
        )
        log(f"{cfg.describe_actors()} ready ({time.perf_counter() - launched.started_at:.1f} s)")
        if isinstance(cfg, SamplingConfig):
            yield RayBackend(cfg, trained, samplers, scorers, log, progress)
        else:
            yield RayTrainer(cfg, trained, log, progress)
    finally:
        launched.stop()


def ray_train(
    cfg: SamplingConfig,
    run_dir: Path,
    tracker: Tracker | None = None,
    log: Log = print,
    launched: Launched | None = None,
) -> list[dict[str, float]]:
    """Train the config's algorithm on Ray; the per-epoch metrics, as `run_epochs` gives (see `ray_backend`
    for `launched`)."""
    with ray_backend(cfg, run_dir, log, progress_for(log), launched) as backend:
        return run_backend(cfg, run_dir, backend, tracker, log)


@dataclass
class SamplingCalls:
    """An epoch's sampler and scorer calls, sent and not yet waited for (object references)."""

    samples: list
    images: list
    rewards: list | None  # None: not scored
    sizes: list[int]  # each chunk's number of images


def launch_sampling(cfg, epoch, prompts, samplers, scorers, weights: Weights, score: bool) -> SamplingCalls:
    """The epoch's chunks over the samplers in turn, each chunk's images to a scorer as soon as sampled."""
    chunks = plan_chunks(prompts, cfg.sample_batch, cfg.seed, epoch)
    group_size = cfg.sampling_settings()["group_size"]  # each image's prompt, for prompt-conditioned rewards
    image_prompts = [chunk_prompts(chunk, group_size) for chunk in chunks]
    return sample_chunks(chunks, image_prompts, samplers, scorers, weights, score)


def sample_chunks(
    chunks: list[Chunk], image_prompts: list[list[str]], samplers, scorers, weights, score, **overrides
) -> SamplingCalls:
    """The chunks over the samplers in turn; with `score`, each chunk's images to a scorer as soon as
    sampled, or, with no scorers, scored by the sampler that drew them. `image_prompts`: each chunk's
    prompt per image."""
    sizes = [len(prompts) for prompts in image_prompts]
    if score and not scorers:
        outs = [
            samplers[i % len(samplers)]
            .sample_and_score.options(num_returns=3)
            .remote(chunk, weights, prompts, **overrides)
            for i, (chunk, prompts) in enumerate(zip(chunks, image_prompts, strict=True))
        ]
        return SamplingCalls([o[0] for o in outs], [o[1] for o in outs], [o[2] for o in outs], sizes)
    outs = [
        samplers[i % len(samplers)].sample.options(num_returns=2).remote(chunk, weights, **overrides)
        for i, chunk in enumerate(chunks)
    ]
    images = [image_ref for _, image_ref in outs]
    rewards = None
    if score:
        rewards = [
            scorers[i % len(scorers)].score.remote(ref, prompts)
            for i, (ref, prompts) in enumerate(zip(images, image_prompts, strict=True))
        ]
    return SamplingCalls([s for s, _ in outs], images, rewards, sizes)


def collect(calls: SamplingCalls, log: Log, progress: Progress | None = None):
    """(samples, rewards or None, the images' references, the seconds waited for each phase); the images
    sampled are counted in `progress` chunk by chunk."""
    start = time.perf_counter()
    samples = concat_samples(wait_counted(calls.samples, calls.sizes, progress or quiet(), "sampled"))
    sampled = time.perf_counter()
    rewards = None if calls.rewards is None else torch.cat(wait(calls.rewards, "scoring", log))
    timing = {"time_sample_s": sampled - start, "time_score_s": time.perf_counter() - sampled}
    return samples, rewards, calls.images, timing
