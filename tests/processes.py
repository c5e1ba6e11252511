"""Processes the slow tests start (a Ray head, an MLflow server, a job) and stop by process group: never
`ray stop`, which would kill every Ray process on the machine."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

# Job flags that keep a job test's evaluation small: four held-out images instead of 32.
SMALL_EVAL = ["--eval-images", "4"]
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def submit_job(address: str, job: list[str], env: dict, *options: str) -> subprocess.CompletedProcess:
    """`ray job submit --address <address> <options> -- <job>` from the checkout, as the README does; waits
    for the job to end and asserts that it succeeded."""
    command = [str(BIN / "ray"), "job", "submit", "--address", address, *options, "--", *job]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:  # it answers (the dashboard asks for its auth token)
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(url)


def start_process(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    """A process in a session of its own, so that its whole group can be stopped and nothing else."""
    return subprocess.Popen(
        command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def stop_process(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM to the process's group, SIGKILL after `grace_s` (`ray start --block` took 30 s to go)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start_ray_head(
    ray: Path, gcs_port: int, dashboard_port: int, temp_dir: Path, env: dict, log: Path, *flags: str
) -> subprocess.Popen:
    """`ray start --head --block` on the loopback with its own temp dir (the address file of a `ray start`
    goes there, so no other test's `ray.init(address="auto")` finds this cluster); `flags` add to it."""
    command = [str(ray), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs_port}"]
    command += [f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}"]
    return start_process([*command, "--disable-usage-stats", *flags], env, log)
