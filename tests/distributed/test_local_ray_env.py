"""What a local Ray started by `start_ray` is told to leave out, and a user's own setting kept (no Ray
started: `ray.init` is replaced by one that records the environment the new Ray's processes would inherit)."""

import os

import pytest

from rlft.configs import D3POConfig
from rlft.distributed import cluster
from rlft.distributed.cluster import start_ray

WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


@pytest.fixture
def inherited(monkeypatch) -> list[str | None]:
    """The watcher's variable as each local `ray.init` saw it (no cluster answers at "auto")."""
    seen = []

    def init(address=None, **kwargs):
        if address == "auto":
            raise ConnectionError("no cluster here")
        seen.append(os.environ.get(WATCHER))

    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster.ray, "init", init)
    monkeypatch.setattr(cluster.ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 8.0}}])
    monkeypatch.setattr(cluster.ray, "cluster_resources", lambda: {"CPU": 8.0})
    monkeypatch.setattr(cluster, "autoscaler_node_types", lambda: None)
    return seen


def test_a_local_ray_starts_without_ray_trains_preemption_watcher(inherited, monkeypatch):
    monkeypatch.delenv(WATCHER, raising=False)
    assert start_ray(D3POConfig(), log=lambda line: None)
    assert inherited == ["0"]


def test_a_users_own_setting_of_the_watcher_is_kept(inherited, monkeypatch):
    monkeypatch.setenv(WATCHER, "1")
    start_ray(D3POConfig(), log=lambda line: None)
    assert inherited == ["1"]
