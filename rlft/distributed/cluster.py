"""Joining a Ray cluster and checking, before any actor starts, that it can hold what a config asks for.

A job joins `--ray-address`, RAY_ADDRESS or a `ray start` cluster on the machine, else starts a local Ray.
The check compares each kind of actor with the nodes alive and, on an autoscaling cluster, with the node
types the autoscaler may add; a ValueError names the field.
"""

import json
import logging
import math
import os
import time

import ray
from ray._private import ray_constants
from ray.experimental import internal_kv

from rlft.algorithms.backend import Log
from rlft.configs import RunConfig

QUIET = dict(logging_level=logging.ERROR, log_to_driver=False)

# A local Ray has no node to drain, so Ray Train's preemption watcher (an actor polling for node drains)
# would be one more process waking every 10 ms beside the computation (benchmarks/speed/ray_pipeline.py
# measures what an idle Ray tree costs); a variable the user set is left alone.
LOCAL_RAY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def start_ray(cfg: RunConfig, log: Log = print) -> bool:
    """Join cfg.ray_address, RAY_ADDRESS or a cluster `ray start` made here, else start a local Ray (True).

    Then check that the cluster can hold the actors and workers the config asks for; a ValueError names the
    field otherwise, before any actor starts.
    """
    started = False
    if not ray.is_initialized():
        start = time.perf_counter()
        address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
        try:
            ray.init(address=address or "auto", **QUIET)
        except ConnectionError:
            if address:
                raise ValueError(
                    f"ray_address={address!r} is not allowed: no Ray cluster answers there"
                ) from None
            # Logical CPUs beyond the cores: actors, train workers and Ray Data tasks each hold one, and on
            # two cores a Data pipeline feeding a train worker otherwise hangs (seen: 7 minutes).
            cpus = max(os.cpu_count() or 1, math.ceil(demand(cfg)["CPU"]) + 2)
            for name, value in LOCAL_RAY_ENV.items():  # read by the processes this Ray starts
                os.environ.setdefault(name, value)
            ray.init(num_cpus=cpus, include_dashboard=False, **QUIET)  # no dashboard: less load
            started = True
        where = (
            "a new local Ray" if started else f"the Ray cluster at {ray.get_runtime_context().gcs_address}"
        )
        log(f"using {where} ({time.perf_counter() - start:.1f} s)")
    try:
        nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
        node_types = autoscaler_node_types()
        if node_types is None:
            check_resources(cfg, ray.cluster_resources(), nodes)
        elif node_types:
            check_resources(cfg, None, nodes + node_types)
        else:
            log(
                "an autoscaler adds nodes to this cluster as the actors ask for them; "
                f"what it cannot add fails the run after ready_timeout_s={cfg.ready_timeout_s:g} s"
            )
    except ValueError:
        if started:
            ray.shutdown()
        raise
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.execution_options.preserve_order = True  # the same seed gives the same order
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    return started


GROUPS = {  # the field that counts each kind of actor: the field with its GPUs per actor
    "samplers": "sampler_gpus",
    "scorers": "scorer_gpus",
    "train_workers": "worker_gpus",
}


# The field naming the custom resource each kind of actor also asks for, if it has one.
CUSTOM = {"samplers": "sampler_resource", "scorers": None, "train_workers": "worker_resource"}


def demand(cfg: RunConfig) -> dict[str, float]:
    counts = cfg.actor_counts()
    cpus = sum(counts.values()) * cfg.actor_cpus
    gpus = sum(counts[count] * getattr(cfg, gpus) for count, gpus in GROUPS.items() if counts[count])
    return {"CPU": cpus, "GPU": gpus}


def autoscaler_node_types() -> list[dict[str, float]] | None:
    """The resources of each node type an autoscaler may add; [] when one runs but does not say what its
    node types hold; None when nothing will add nodes to this cluster.

    Ray 2.60's default autoscaler publishes only a status: with an autoscaling config (`ray up`, a
    `--autoscaling-config`) it names nodes by their configured type, without one (`ray.init`, a plain
    `ray start`) by node id, as `node_<id>`. Autoscaler version 2 publishes its node types with resources.
    """
    config = ray._private.state.state.get_cluster_config()
    if config is not None:
        return [dict(group.resources) for group in config.node_group_configs if group.max_count != 0]
    status = internal_kv._internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    if status is None:
        return None
    names = json.loads(status).get("autoscaler_report", {}).get("node_type_mapping") or {}
    return [] if any(not name.startswith("node_") for name in names.values()) else None


def check_resources(cfg: RunConfig, total: dict[str, float] | None, nodes: list[dict[str, float]]) -> None:
    """ValueError naming the field when the cluster can never hold what the config asks for.

    nodes: the resources of each node (of an autoscaling cluster: each node and each node type it may add);
    total: the cluster's resources, or None when an autoscaler may add more.
    """
    counts = cfg.actor_counts()
    for count, gpus in GROUPS.items():
        if not counts[count]:  # none started (a run on people's labels samples nothing)
            continue
        shape = {"CPU": cfg.actor_cpus, "GPU": getattr(cfg, gpus)}
        field = CUSTOM[count]
        custom = getattr(cfg, field) if field else None
        if custom and not any(node.get(custom, 0) >= 1 for node in nodes):
            raise ValueError(
                f"{field}={custom!r} is not allowed: no node of this cluster offers that resource"
            )
        shape |= {custom: 1.0} if custom else {}
        if not any(all(node.get(k, 0) >= v for k, v in shape.items()) for node in nodes):
            field = gpus if shape["GPU"] > max((n.get("GPU", 0) for n in nodes), default=0) else "actor_cpus"
            raise ValueError(
                f"{field}={getattr(cfg, field)} is not allowed: no node of this cluster has "
                f"{shape['CPU']:g} CPUs and {shape['GPU']:g} GPUs for one of the {count}"
            )
    for resource, needed in demand(cfg).items():
        if total is not None and needed > total.get(resource, 0):
            asked = ", ".join(f"{count}={n}" for count, n in counts.items() if n)
            raise ValueError(
                f"{asked} are not allowed together: they need {needed:g} {resource}s "
                f"and this cluster has {total.get(resource, 0):g}"
            )
