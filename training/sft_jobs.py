"""SFT data generation out of the app's process: started from the SFT data page, followed after any page reload.

`start_generation` checks the request completely (fields, prompts, the endpoint answering or the LLM version
existing), creates the dataset as `queued` with the request and the app's settings (never a secret: an API key
stays in its environment variable, which the worker inherits), then starts `python -m training.sft_jobs
<knowledge database> <name>` in a session of its own, so a run of many minutes (SmolLM2 on two CPU cores writes
about 14 tokens/s) survives page reloads and never holds the Streamlit process. The worker keeps the dataset's
state and progress up to date in the knowledge database; its output goes to `<workspace>/exports/sft/<name>.log`.

Cancelling sends the worker SIGTERM: the pairs it made stay (pending review) and the dataset is `cancelled`.
A worker that died without saying so (killed, machine restarted) is found by its process id and marked failed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from engine import store
from engine.access import require_admin
from eval.jobs import PASSED_SETTINGS
from training.sft_data import SftDataError, SftDataset, create_dataset, exports_dir, get_dataset, list_datasets, update_dataset
from training.sft_generation import GenerationRequest, check_backend, check_request, generate_dataset

RUNNING = ("queued", "generating")
STARTING_S = 120.0  # a queued worker may still be between fork and exec


class Cancelled(BaseException):
    """SIGTERM: an administrator cancelled the generation."""


def log_path(settings, name: str) -> Path:
    return exports_dir(settings) / f"{name}.log"


def start_generation(settings, connection, request: GenerationRequest) -> SftDataset:
    """Check the request, create its dataset and start the worker; SftDataError (one line) before anything is written."""
    require_admin("generating SFT data")
    check_request(request)
    if connection.execute("SELECT 1 FROM sft_datasets WHERE name = ?", (request.name,)).fetchone():
        raise SftDataError(f"an SFT dataset named {request.name} already exists; choose another name or delete it first")
    check_backend(settings, request)
    passed = {key: getattr(settings, key) for key in PASSED_SETTINGS}
    passed["workspace"] = str(settings.workspace.resolve())
    config = {**request.to_config(), "settings": {key: value for key, value in passed.items() if value is not None}}
    create_dataset(connection, request.name, config, state="queued")
    exports_dir(settings).mkdir(parents=True, exist_ok=True)
    with open(log_path(settings, request.name), "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "training.sft_jobs", str(settings.knowledge_db.resolve()), request.name],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=os.getcwd())
    update_dataset(connection, request.name, pid=process.pid)
    return get_dataset(connection, request.name)


def refreshed(connection, dataset: SftDataset) -> SftDataset:
    """The dataset, marked failed when its worker is gone without finishing."""
    if dataset.state not in RUNNING or _alive(dataset) or _starting(dataset):
        return dataset
    current = get_dataset(connection, dataset.name)  # it may have finished between the two reads
    if current.state in RUNNING:
        update_dataset(connection, dataset.name, state="failed", pid=None,
                       error="the generation process ended without finishing (killed, or the machine restarted)")
        current = get_dataset(connection, dataset.name)
    return current


def refreshed_datasets(connection) -> list[SftDataset]:
    return [refreshed(connection, dataset) for dataset in list_datasets(connection)]


def cancel_generation(connection, name: str) -> SftDataset:
    """Ask the worker to stop; the pairs it made stay, pending review."""
    require_admin("cancelling SFT data generation")
    dataset = refreshed(connection, get_dataset(connection, name))
    if dataset.state not in RUNNING:
        raise SftDataError(f"SFT dataset {name} is not being generated (it is {dataset.state})")
    if _alive(dataset):
        os.kill(dataset.pid, signal.SIGTERM)
    else:
        update_dataset(connection, name, state="cancelled", pid=None, error="cancelled by an administrator")
    return get_dataset(connection, name)


def _alive(dataset: SftDataset) -> bool:
    """Whether the dataset's pid is still the process generating it: this one, or one naming the dataset on its
    command line (the worker, `deploywise sft generate --name ...`), not another process that reuses the id."""
    if not dataset.pid:
        return False
    if dataset.pid == os.getpid():
        return True
    try:
        text = Path(f"/proc/{dataset.pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return dataset.name in text.split("\0")


def _starting(dataset: SftDataset) -> bool:
    if dataset.state != "queued":
        return False
    return (datetime.now(UTC) - datetime.fromisoformat(dataset.created_at)).total_seconds() < STARTING_S


# --- the worker -------------------------------------------------------------------------------------------------


def run_worker(database: Path, name: str) -> int:
    """Generate the dataset the app queued; the exit code."""
    from engine.knowledge_base import KnowledgeBase
    from engine.settings import load_settings

    connection = store.connect(database)

    def cancelled(signum, frame):
        raise Cancelled()

    signal.signal(signal.SIGTERM, cancelled)
    try:
        dataset = get_dataset(connection, name)
        update_dataset(connection, name, state="generating", pid=os.getpid(),
                       progress={"done": 0, "total": 0, "message": "loading the models"})
        settings = load_settings(**dataset.config["settings"])
        kb = KnowledgeBase.open(settings)
        try:
            generate_dataset(settings, kb, GenerationRequest.from_config(dataset.config), existing=True,
                             on_progress=lambda done, total, message: print(f"[{done}/{total}] {message}", flush=True))
        finally:
            kb.connection.close()
    except Cancelled:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        update_dataset(connection, name, state="cancelled", pid=None, error="cancelled by an administrator")
        print(f"deploywise: SFT dataset {name} cancelled", flush=True)
        return 1
    except Exception as error:  # the dataset is marked failed by generate_dataset, or here if it failed earlier
        import traceback

        traceback.print_exc()
        if get_dataset(connection, name).state in RUNNING:
            update_dataset(connection, name, state="failed", pid=None,
                           error=f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:300]}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    print(f"deploywise: SFT dataset {name} generated", flush=True)
    return 0


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: python -m training.sft_jobs <knowledge database> <dataset name>", file=sys.stderr)
        return 2
    return run_worker(Path(sys.argv[1]), sys.argv[2])


if __name__ == "__main__":
    sys.exit(main())
