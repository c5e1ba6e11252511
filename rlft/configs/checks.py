"""The checks behind every config's fields: each raises ValueError naming the field, its value and what is
allowed (credentials in a storage URL masked), before anything is built."""

from rlft.runs.secrets import redact


def check(ok: bool, field: str, value: object, allowed: str) -> None:
    if not ok:  # a storage URL may carry credentials: they are masked
        raise ValueError(redact(f"{field}={value!r} is not allowed: {allowed}"))


def refuse_labels(reward: str, needs: str) -> None:
    """People's labels (`human:<folder>`) train only with jobs/d3po_labels.py: refused, saying what the job
    `needs` instead."""
    allowed = f"{needs}; train on people's labels with jobs/d3po_labels.py"
    check(not reward.startswith("human:"), "reward", reward, allowed)


def check_gpus(field: str, value: float) -> None:
    whole_or_fraction = value >= 0 and (value <= 1 or value == int(value))
    check(whole_or_fraction, field, value, "0, a fraction of one GPU, or a whole number")


def check_resource(field: str, value: str | None) -> None:
    ok = value is None or (value.strip() == value != "" and value not in ("CPU", "GPU", "memory"))
    check(ok, field, value, "a custom resource name (CPUs and GPUs have fields of their own)")


def run_name_stays_below(name: str) -> bool:
    """A run's folder is runs_dir/name: the name must not reach elsewhere ('..' wrote into the working folder)
    nor break MLflow's quoted filter on run names."""
    return bool(name.strip()) and name not in (".", "..") and not set(name) & set("/\\'\"\0")


def check_divides(batch_size: int, workers: int) -> None:
    allowed = f"a multiple of train_workers ({workers}): each worker takes an equal share of a batch"
    check(batch_size % workers == 0, "batch_size", batch_size, allowed)


def check_micro_batch(micro_batch: int | None, share: int) -> None:
    """micro_batch (items or samples per forward and backward pass) must divide each worker's share."""
    divisors = ", ".join(str(d) for d in range(1, share + 1) if share % d == 0)
    fits = micro_batch is None or (micro_batch >= 1 and share % micro_batch == 0)
    allowed = f"None or a divisor of batch_size / train_workers ({share}): {divisors}"
    check(fits, "micro_batch", micro_batch, allowed)
