"""The Ray cluster that training jobs run on: the configured one, or a local head the app starts once and leaves
running, so jobs outlive the Streamlit process. Separate because launching and following jobs both go through it.

A job is submitted to the configured cluster (DEPLOYWISE_RAY_ADDRESS, else RAY_ADDRESS) or to the local head.
`JobError` and its one-line reasons (`first_line`) are here, below the launch and the following, which raise them too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from engine.core.errors import first_line


class JobError(RuntimeError):
    """A job cannot be launched, found or cancelled; one line saying why."""


def cluster_address(settings) -> str:
    """The Ray Jobs address: the configured cluster, else the local head's dashboard."""
    return settings.ray_address or os.environ.get("RAY_ADDRESS") or f"http://127.0.0.1:{settings.ray_dashboard_port}"


def jobs_client(settings, *, start_local: bool = True):
    """A JobSubmissionClient for the cluster; the local head is started first when none is configured."""
    from ray.job_submission import JobSubmissionClient  # ray: heavy, loaded only when a cluster is reached

    address = cluster_address(settings)
    if not (settings.ray_address or os.environ.get("RAY_ADDRESS")) and not dashboard_up(address):
        if not start_local:
            raise JobError(f"no Ray head is running at {address}")
        start_local_head(settings)
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise JobError(f"cannot reach the Ray cluster at {address}: {first_line(error)}") from None


def start_local_head(settings, timeout_s: float = 90.0) -> None:
    """`ray start --head` with the dashboard (the Jobs API) on 127.0.0.1, left running for later jobs."""
    ray = Path(sys.executable).with_name("ray")
    command = [str(ray if ray.exists() else shutil.which("ray") or "ray"), "start", "--head",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={settings.ray_dashboard_port}",
               "--disable-usage-stats"]
    if settings.ray_num_cpus:
        command.append(f"--num-cpus={settings.ray_num_cpus}")
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    address = cluster_address(settings)
    if done.returncode != 0 and not dashboard_up(address):
        raise JobError(f"cannot start a local Ray head: {first_line(done.stderr or done.stdout)}")
    deadline = time.monotonic() + timeout_s
    while not dashboard_up(address):
        if time.monotonic() > deadline:
            raise JobError(f"the local Ray head started but its Jobs API at {address} did not answer in {timeout_s:.0f} s")
        time.sleep(0.5)


def dashboard_up(address: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{address.rstrip('/')}/api/version", timeout=timeout_s) as response:
            return response.status == 200
    except OSError:
        return False
