"""The Ray cluster that training jobs run on: the configured one, or a local head the app starts once and leaves
running, so jobs outlive the Streamlit process. Separate because launching and following jobs both go through it.

A job is submitted to the configured cluster (DEPLOYWISE_RAY_ADDRESS, else RAY_ADDRESS) or to the local head.
`JobError` and its one-line reasons (`first_line`) are here, below the launch and the following, which raise them too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from engine.core.errors import first_line

# What the local head (and so every job and worker it starts, which inherit its environment) gets of the app's
# environment: the system's and the runtimes' (Python, Ray, torch, CUDA, Hugging Face) settings and deploywise's own.
_HEAD_NAMES = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "PYTHONPATH",
               "PYTHONHOME", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
               "CURL_CA_BUNDLE", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM"}
_HEAD_PREFIXES = ("LC_", "XDG_", "RAY_", "CUDA_", "NVIDIA_", "PYTORCH_", "TORCH", "HF_", "TRANSFORMERS_", "MLFLOW_",
                  "DEPLOYWISE_")
# ... minus anything that looks like a credential, except those a job needs and is given explicitly: Ray's own token
# (the head and the app must agree on it) and the MLflow tracking server's, to which a job logs its run and adapter.
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|PWD|CREDENTIAL|AUTH", re.IGNORECASE)
_JOB_CREDENTIALS = ("RAY_AUTH_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
_DATABRICKS_CREDENTIALS = ("DATABRICKS_HOST", "DATABRICKS_TOKEN", "DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET",
                           "DATABRICKS_CONFIG_PROFILE")


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
    done = subprocess.run(command, capture_output=True, text=True, env=head_environment(settings, os.environ))
    address = cluster_address(settings)
    if done.returncode != 0 and not dashboard_up(address):
        raise JobError(f"cannot start a local Ray head: {first_line(done.stderr or done.stdout)}")
    deadline = time.monotonic() + timeout_s
    while not dashboard_up(address):
        if time.monotonic() > deadline:
            raise JobError(f"the local Ray head started but its Jobs API at {address} did not answer in {timeout_s:.0f} s")
        time.sleep(0.5)


def head_environment(settings, environ: Mapping[str, str]) -> dict[str, str]:
    """The local head's environment: what the runtimes and deploywise need of `environ`, without the app's other
    secrets (API keys, cloud credentials, DEPLOYWISE_LLM_API_KEY), which every job would otherwise inherit; the MLflow
    tracking credentials pass (jobs log to it), and Databricks' when MLflow is on Databricks."""
    passed = {name: value for name, value in environ.items()
              if (name in _HEAD_NAMES or name.startswith(_HEAD_PREFIXES)) and not _SECRET_NAME.search(name)}
    credentials = _JOB_CREDENTIALS
    if any((uri or "").startswith("databricks") for uri in (settings.tracking_uri, settings.mlflow_registry_uri)):
        credentials += _DATABRICKS_CREDENTIALS
    passed |= {name: environ[name] for name in credentials if name in environ}
    return passed | {"RAY_USAGE_STATS_ENABLED": "0"}


def dashboard_up(address: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{address.rstrip('/')}/api/version", timeout=timeout_s) as response:
            return response.status == 200
    except OSError:
        return False
