"""Faults survived with nothing lost, on a real multi-node Ray cluster on this machine (slow tier).

`ray.cluster_utils.Cluster` starts a head and worker nodes as separate raylets here; removing a node kills
its processes as losing a machine would. Every wait in these runs has a limit (`ready_timeout_s`,
`max_failures`), so a fault that is not survived fails the test instead of hanging it.
"""

import math
import os
import signal
import threading
import time

import psutil
import pytest
import ray
import torch
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster

from rlft.configs import D3POConfig
from rlft.diffusion.policy import build_policy
from rlft.distributed.actors import Weights, start_actors
from rlft.distributed.cluster import start_ray
from rlft.distributed.ray_loop import collect, launch_sampling, ray_train
from rlft.epoch import epoch_prompts
from rlft.local import train_local
from rlft.runs.tracking import Tracker

pytestmark = pytest.mark.slow
SMALL = dict(
    eval_images=4, pairs_per_epoch=4, num_steps=3, batch_size=4, threads=1, sample_batch=2, shuffle=False
)


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 4})
    start_ray(D3POConfig())
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def sampler_pid() -> int:
    """The one sampler actor's process: Ray titles an actor's process ray::<class>, ray::<class>.<method>
    while it runs one."""
    titles = [(p.pid, " ".join(p.info["cmdline"] or [])) for p in psutil.process_iter(["cmdline"])]
    (pid,) = [pid for pid, title in titles if title.startswith("ray::Sampler")]
    return pid


def test_a_sampler_killed_mid_epoch_is_restarted_and_no_trajectory_is_lost_or_doubled(cluster):
    cfg = D3POConfig(pairs_per_epoch=12, group_size=2, num_steps=8, sample_batch=1, threads=1)
    (sampler,), scorers = start_actors(cfg, cfg.sampling_settings(), cfg.reward)
    # Trained (non-base) weights: a restarted sampler that forgot to load them would sample other images.
    _, policy = build_policy(cfg)
    state = {k: v + 0.05 * torch.randn_like(v) for k, v in policy.state_dict().items()}
    weights = Weights(1, [ray.put(state)])
    prompts = epoch_prompts(cfg, 0)

    def epoch() -> tuple[dict, torch.Tensor, float]:
        start = time.perf_counter()
        calls = launch_sampling(cfg, 0, prompts, [sampler], scorers, weights, True)
        samples, rewards, _, _ = collect(calls, print)
        return samples, rewards, time.perf_counter() - start

    ray.get(sampler.__ray_ready__.remote())  # the sampler has built its pipeline
    first_pid = sampler_pid()
    ray.get([scorer.score.remote(torch.zeros(1, 3, 8, 8)) for scorer in scorers])
    expected, expected_rewards, seconds = epoch()
    result = {}
    thread = threading.Thread(
        target=lambda: result.update(zip(("samples", "rewards", "s"), epoch(), strict=True))
    )
    thread.start()
    time.sleep(seconds / 3)
    assert thread.is_alive()  # the kill lands mid-epoch
    os.kill(first_pid, signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive()

    assert sampler_pid() != first_pid  # restarted
    groups = result["samples"]["group"]
    # 12 groups of 2: every group exactly twice, none lost, none doubled; the same samples and rewards.
    assert len(groups) == 24 and torch.equal(torch.bincount(groups), torch.full((12,), 2))
    assert torch.equal(result["samples"]["latents"], expected["latents"])
    assert torch.equal(result["rewards"], expected_rewards)
    print(f"epoch {seconds:.1f} s without the kill, {result['s']:.1f} s with it")


def test_a_lost_train_worker_node_restarts_from_the_last_checkpoint_and_nothing_is_logged_twice(
    cluster, tmp_path
):
    cfg = D3POConfig(epochs=3, worker_resource="trainer", max_failures=2, ready_timeout_s=180, **SMALL)
    reference = train_local(D3POConfig(epochs=3, **SMALL), tmp_path / "reference", log=print)
    trainer_node = cluster.add_node(num_cpus=1, resources={"trainer": 1})
    lines, result = [], {}

    def log(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker("faults", cfg, {"algorithm": "d3po"}, uri=uri)

    def run() -> None:
        with tracker:
            result["history"] = ray_train(cfg, tmp_path / "ray", tracker, log=log)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 300
    while not any(line.startswith("epoch   0") for line in lines):
        assert thread.is_alive() and time.monotonic() < deadline, lines
        time.sleep(0.2)
    cluster.remove_node(trainer_node)  # the machine holding the only train worker is gone
    cluster.add_node(num_cpus=1, resources={"trainer": 1})  # the autoscaler's replacement
    thread.join(timeout=600)
    assert not thread.is_alive()

    assert any("train workers started again (restart 1)" in line for line in lines), lines
    for epoch, (got, want) in enumerate(zip(result["history"], reference, strict=True)):
        for key in ("reward_mean", "loss"):
            assert math.isclose(got[key], want[key], rel_tol=1e-5, abs_tol=1e-7), (epoch, key)
    client = MlflowClient(uri)
    assert [m.step for m in client.get_metric_history(tracker.run_id, "reward_mean")] == [0, 1, 2]
