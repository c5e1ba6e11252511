"""What a job learns of the node types an autoscaler may add, read from what each autoscaler publishes, and
the check it makes with them (no Ray started: the published records are given as Ray 2.60 stores them)."""

import json
from types import SimpleNamespace

import pytest

from rlft.configs import D3POConfig, RunConfig
from rlft.distributed import cluster
from rlft.distributed.cluster import autoscaler_node_types, check_resources

HEAD = {"CPU": 4.0}
GPU_NODE_TYPE = {"CPU": 4.0, "GPU": 1.0}


def published(monkeypatch, config=None, status=None):
    """An autoscaler v2 cluster config (or None), and the default autoscaler's status record (or None)."""
    monkeypatch.setattr(cluster.ray._private.state.state, "get_cluster_config", lambda: config)
    record = None if status is None else json.dumps(status).encode()
    monkeypatch.setattr(cluster.internal_kv, "_internal_kv_get", lambda key: record)


def test_autoscaler_v2_publishes_its_node_types_with_their_resources(monkeypatch):
    groups = [
        SimpleNamespace(resources=GPU_NODE_TYPE, max_count=4),
        SimpleNamespace(resources={"CPU": 64.0, "GPU": 8.0}, max_count=0),  # never added
    ]
    published(monkeypatch, config=SimpleNamespace(node_group_configs=groups))
    assert autoscaler_node_types() == [GPU_NODE_TYPE]


def test_the_default_autoscaler_with_a_config_names_its_node_types_without_resources(monkeypatch):
    mapping = {"127.0.0.1": "ray.head.default", "fffe0001": "fake_gpu_sampler"}
    published(monkeypatch, status={"autoscaler_report": {"node_type_mapping": mapping}})
    assert autoscaler_node_types() == []  # an autoscaler runs; what its types hold is not said


def test_a_local_ray_or_a_plain_ray_start_adds_no_nodes(monkeypatch):
    mapping = {"127.0.0.1": "node_0f3a9c"}  # nodes named by id: no autoscaling config
    published(monkeypatch, status={"autoscaler_report": {"node_type_mapping": mapping}})
    assert autoscaler_node_types() is None
    published(monkeypatch)
    assert autoscaler_node_types() is None


def test_a_gpu_only_a_node_type_has_is_accepted_and_more_than_any_type_has_is_named():
    nodes = [HEAD, GPU_NODE_TYPE]  # the CPU head alive, plus the type the autoscaler may add
    check_resources(D3POConfig(samplers=8, sampler_gpus=1), None, nodes)  # no total: nodes get added
    with pytest.raises(ValueError, match=r"sampler_gpus=2 is not allowed: no node of this cluster has"):
        check_resources(D3POConfig(sampler_gpus=2), None, nodes)
    with pytest.raises(ValueError, match=r"worker_resource='trainer' is not allowed: no node .* offers"):
        check_resources(D3POConfig(worker_resource="trainer"), None, nodes)


def test_a_run_on_peoples_labels_asks_only_for_its_train_workers():
    nodes = [HEAD]  # no GPU anywhere: samplers asking for one could never start
    with pytest.raises(ValueError, match=r"sampler_gpus=1 is not allowed"):
        check_resources(D3POConfig(sampler_gpus=1), {"CPU": 4.0}, nodes)
    # RunConfig: the fields of a run that samples nothing (jobs/d3po_labels.py's config adds the batch's).
    check_resources(RunConfig(), {"CPU": 4.0}, nodes)
    with pytest.raises(ValueError, match=r"train_workers=5 are not allowed together: they need 5 CPUs"):
        check_resources(RunConfig(train_workers=5), {"CPU": 4.0}, nodes)
