"""cluster.yaml passes the checks `ray up` runs before it touches a cloud (offline, quick)."""

from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from rlft.configs import D3POConfig

ROOT = Path(__file__).resolve().parents[2]


def _config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_validates_as_ray_up_would():
    config = prepare_config(_config())
    validate_config(config)
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}  # no training on the head
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert workers and all(t["min_workers"] == 0 and t["resources"].get("GPU", 0) >= 1 for t in workers)
    assert sum(t["max_workers"] for t in workers) <= config["max_workers"]
    assert any("--shm-size" in option for option in config["docker"]["run_options"])


def test_a_broken_node_type_is_refused():
    config = _config()
    config["available_node_types"]["gpu_sampler"]["resources"] = {"GPU": 0.5}  # must be whole numbers
    with pytest.raises(jsonschema.ValidationError, match="0.5 is not of type 'integer'"):
        validate_config(prepare_config(config))


def test_every_job_on_the_cluster_copies_its_checkpoints_to_s3_once_a_bucket_is_named():
    options = [o.split("=", 1) for o in _config()["docker"]["run_options"] if o.startswith("--env ")]
    (storage,) = [value for name, value in options if name == "--env RLFT_STORAGE"]
    assert storage.startswith("s3://")
    with pytest.raises(ValueError, match="storage=.*YOUR-BUCKET is cluster.yaml's placeholder"):
        D3POConfig(storage=storage)  # a job refuses it before anything starts
    mine = storage.replace("YOUR-BUCKET", "my-bucket")
    assert D3POConfig(storage=mine).storage == "s3://my-bucket/rlft-runs"
