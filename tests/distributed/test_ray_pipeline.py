"""The Ray pipeline against the single-process loop: same numbers, resume, many actors (slow tier)."""

import math

import psutil
import pytest
import ray
import torch
from mlflow.tracking import MlflowClient

from rlft.configs import D3POConfig, DDPOConfig, DRaFTConfig
from rlft.distributed.cluster import check_resources, start_ray
from rlft.distributed.ray_loop import ray_train
from rlft.local import train_local
from rlft.runs.tracking import Tracker

pytestmark = pytest.mark.slow
SMALL = dict(eval_images=4, pairs_per_epoch=4, num_steps=3, batch_size=4, threads=1, sample_batch=2)


@pytest.fixture(scope="module")
def local_ray():
    start_ray(D3POConfig(samplers=2, train_workers=2))
    yield
    ray.shutdown()


def _same(a: list[dict], b: list[dict], keys=("reward_mean", "loss")) -> None:
    for epoch, (x, y) in enumerate(zip(a, b, strict=True)):
        for key in keys:
            assert math.isclose(x[key], y[key], rel_tol=1e-5, abs_tol=1e-7), (epoch, key, x[key], y[key])


def test_d3po_on_ray_gives_the_single_process_numbers_and_resumes_where_it_stopped(local_ray, tmp_path):
    cfg = D3POConfig(epochs=3, shuffle=False, **SMALL)
    reference = train_local(cfg, tmp_path / "single", log=print)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with Tracker("ray", cfg, {"algorithm": "d3po"}, uri=uri) as tracker:
        ray_train(D3POConfig(epochs=2, shuffle=False, **SMALL), tmp_path / "ray", tracker, log=print)
    lines = []
    with Tracker("ray", cfg, {"algorithm": "d3po"}, uri=uri) as tracker:
        resumed = ray_train(cfg, tmp_path / "ray", tracker, log=lines.append)
    assert f"resuming {tmp_path / 'ray'} after epoch 1" in lines
    _same(reference, resumed)
    client = MlflowClient(uri)
    assert [m.step for m in client.get_metric_history(tracker.run_id, "reward_mean")] == [0, 1, 2]
    assert [m.step for m in client.get_metric_history(tracker.run_id, "time_sync_s")] == [0, 1, 2]
    assert client.get_run(tracker.run_id).info.status == "FINISHED"


def test_pipelined_on_ray_the_samplers_draw_the_next_epoch_as_one_process_would_and_a_resume_does_too(
    local_ray, tmp_path
):
    """Epoch e+1 is sampled while epoch e trains, with the weights epoch e trains from, on two samplers."""
    cfg = D3POConfig(epochs=3, shuffle=False, pipeline="on", samplers=2, **SMALL)
    reference = train_local(cfg, tmp_path / "single", log=print)
    ray_train(
        D3POConfig(epochs=2, shuffle=False, pipeline="on", samplers=2, **SMALL), tmp_path / "ray", log=print
    )
    lines = []
    resumed = ray_train(cfg, tmp_path / "ray", log=lines.append)
    assert f"resuming {tmp_path / 'ray'} after epoch 1" in lines
    _same(reference, resumed, ("reward_mean", "loss", "eval_gain_mean", "sample_staleness"))
    assert [h["sample_staleness"] for h in resumed] == [0, 1, 1]


# DRaFT-K and DRaFT-LV (which draws noise of its own in the learner); full DRaFT is DRaFT-K, K = every step.
@pytest.mark.parametrize("variant", ["draft-k", "draft-lv"])
def test_draft_on_ray_gives_the_single_process_numbers(local_ray, tmp_path, variant):
    cfg = DRaFTConfig(
        epochs=2, variant=variant, shuffle=False, batch_size=2, steps_per_epoch=2, num_steps=3, threads=1
    )
    _same(train_local(cfg, tmp_path / "single", log=print), ray_train(cfg, tmp_path / "ray", log=print))


def test_ddpo_on_ray_gives_the_single_process_numbers(local_ray, tmp_path):
    """The samplers' log-probabilities travel with the samples; the workers' ratios start from them."""
    cfg = DDPOConfig(
        epochs=2,
        shuffle=False,
        prompts_per_epoch=2,
        samples_per_prompt=2,
        num_steps=3,
        batch_size=4,
        eval_images=4,
        threads=1,
        sample_batch=2,
    )
    reference = train_local(cfg, tmp_path / "single", log=print)
    _same(reference, ray_train(cfg, tmp_path / "ray", log=print), ("reward_mean", "loss", "approx_kl"))


def test_two_samplers_and_two_train_workers_sample_the_same_first_epoch_and_train(local_ray, tmp_path):
    one = train_local(D3POConfig(epochs=1, **SMALL), tmp_path / "one", log=print)
    cfg = D3POConfig(epochs=2, samplers=2, train_workers=2, **SMALL)
    many = ray_train(cfg, tmp_path / "many", log=print)
    # Each chunk carries its own noise seed: the first epoch's samples do not depend on the sampler count.
    assert many[0]["reward_mean"] == pytest.approx(one[0]["reward_mean"], abs=1e-6)
    assert all(math.isfinite(h["loss"]) and h["grad_norm"] > 0 for h in many)
    weights = torch.load(tmp_path / "many" / "checkpoint" / "state.pt", weights_only=True)["weights"]
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)  # the workers trained


def _ray_process_titles() -> set[str]:
    """The titles of the Ray workers and actors below this process ("ray::Sampler", ...)."""
    titles = set()
    for process in psutil.Process().children(recursive=True):
        try:
            title = " ".join(process.cmdline())
        except psutil.Error:
            continue  # ended between the listing and the reading
        if title.startswith("ray::"):
            titles.add(title.split()[0].split(".")[0])
    return titles


def test_with_no_scorers_the_samplers_score_as_one_process_would_in_a_leaner_tree(local_ray, tmp_path):
    """scorers=0: each sampler scores its own images, so no scorer process; and a local Ray has no node to
    drain, so no Ray Train preemption watcher either (each would be one more process waking every 10 ms)."""
    cfg = D3POConfig(epochs=2, scorers=0, shuffle=False, **SMALL)
    reference = train_local(cfg, tmp_path / "single", log=print)
    seen = []

    def log(line: str) -> None:
        if " ready (" in line:
            seen.append(_ray_process_titles())

    history = ray_train(cfg, tmp_path / "ray", log=log)
    _same(reference, history, keys=("reward_mean", "loss", "eval_reward_mean"))
    assert {"ray::Sampler", "ray::RayTrainWorker", "ray::TrainController", "ray::Mailbox"} <= seen[0]
    assert not {"ray::Scorer", "ray::PreemptionWatcher"} & seen[0], seen[0]


def test_what_the_cluster_can_never_hold_is_named():
    nodes = [{"CPU": 8.0, "GPU": 2.0}, {"CPU": 8.0}]
    total = {"CPU": 16.0, "GPU": 2.0}
    check_resources(D3POConfig(train_workers=2, worker_gpus=1), total, nodes)
    with pytest.raises(ValueError, match=r"worker_gpus=4 is not allowed: no node of this cluster has"):
        check_resources(D3POConfig(worker_gpus=4), total, nodes)
    with pytest.raises(ValueError, match=r"train_workers=4 .* need 4 GPUs and this cluster has 2"):
        check_resources(D3POConfig(train_workers=4, worker_gpus=1, batch_size=16), total, nodes)
    with pytest.raises(ValueError, match=r"need 18 CPUs and this cluster has 16"):
        check_resources(D3POConfig(samplers=16, train_workers=1), total, nodes)
