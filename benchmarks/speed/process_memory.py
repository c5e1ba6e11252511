"""The peak memory of this process and every process below it (Ray's GCS, raylet, workers and actors, all
started under a local `ray.init`), sampled in a thread while a block runs; and the CPU time they use.

Memory is counted as PSS (each shared page split among the processes sharing it), so the torch libraries
every Ray worker maps are not counted once per worker; where PSS cannot be read, RSS is used instead.
"""

import threading

import psutil


def tree_memory(root: psutil.Process) -> tuple[float, dict[str, float]]:
    """(bytes in all, bytes by process name) for `root` and its descendants at this moment."""
    by_name: dict[str, float] = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            info = process.memory_full_info()
            used = getattr(info, "pss", info.rss)
            name = process.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # a process that ended between the listing and the reading
        by_name[name] = by_name.get(name, 0.0) + used
    return sum(by_name.values()), by_name


def cpu_seconds(processes: list[psutil.Process]) -> dict[int, tuple[str, float]]:
    """{pid: (name, user + system CPU seconds so far)} of those of `processes` still alive."""
    used = {}
    for process in processes:
        try:
            times = process.cpu_times()
            used[process.pid] = (process.name(), times.user + times.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return used


class PeakTreeMemory:
    """`with PeakTreeMemory() as peak: ...`, then `peak.bytes` (the largest total seen) and `peak.by_name`
    (the split at that moment). Samples every `every_s` seconds."""

    def __init__(self, every_s: float = 0.5):
        self.every_s, self.bytes, self.by_name = every_s, 0.0, {}
        self._stop = threading.Event()
        self._root = psutil.Process()

    def _sample(self) -> None:
        total, by_name = tree_memory(self._root)
        if total > self.bytes:
            self.bytes, self.by_name = total, by_name

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def __enter__(self) -> "PeakTreeMemory":
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
