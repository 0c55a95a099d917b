"""SFT data generation out of the app's process: started from the SFT data page, followed after any page reload.

`start_generation` checks the request completely (fields, prompts, the endpoint answering or the LLM version
existing), creates the dataset as `queued` with the request and the app's settings (never a secret: an API key
stays in its environment variable, which the worker inherits), then starts `python -m training.sft_worker
<knowledge database> <name>` in a session of its own, so a run of many minutes (SmolLM2 on two CPU cores writes
about 14 tokens/s) survives page reloads and never holds the Streamlit process. The worker keeps the dataset's
state and progress up to date in the knowledge database; its output goes to `<workspace>/exports/sft/<name>.log`.

Cancelling sends the worker SIGTERM: the pairs it made stay (pending review) and the dataset is `cancelled`.
A worker that died without saying so (killed, machine restarted) is found by its process id and marked failed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from engine.access.roles import require_admin
from engine.core import database
from engine.core.settings import load_settings, worker_settings
from engine.core.workers import CANCELLED, cancel_on_sigterm, run_work, start_worker, stop_worker, worker_alive
from engine.knowledge.knowledge_base import KnowledgeBase
from training.sft_data import SftDataError, SftDataset, create_dataset, get_dataset, list_datasets, update_dataset
from training.sft_export import exports_dir
from training.sft_generation import generate_dataset
from training.sft_generation_request import GenerationRequest, check_backend, check_request

RUNNING = ("queued", "generating")


def log_path(settings, name: str) -> Path:
    return exports_dir(settings) / f"{name}.log"


def start_generation(settings, connection, request: GenerationRequest) -> SftDataset:
    """Check the request, create its dataset and start the worker; SftDataError (one line) before anything is written."""
    require_admin("generating SFT data")
    check_request(settings, request)
    if connection.execute("SELECT 1 FROM sft_datasets WHERE name = ?", (request.name,)).fetchone():
        raise SftDataError(f"an SFT dataset named {request.name} already exists; choose another name or delete it first")
    check_backend(settings, request)
    config = {**request.to_config(), "settings": worker_settings(settings)}
    create_dataset(connection, request.name, config, state="queued")
    exports_dir(settings).mkdir(parents=True, exist_ok=True)
    pid = start_worker("training.sft_worker", [str(settings.knowledge_db.resolve()), request.name],
                       log_path(settings, request.name))
    update_dataset(connection, request.name, pid=pid)
    return get_dataset(connection, request.name)


def refreshed(connection, dataset: SftDataset) -> SftDataset:
    """The dataset, marked failed when its worker is gone without finishing. The process generating it is this one
    (`generate_dataset` in-process) or one with the dataset's name among its arguments (the worker, `deploywise sft
    generate --name ...`); a queued dataset's worker may still be starting (see engine.core.workers)."""
    queued_at = dataset.created_at if dataset.state == "queued" else None
    if dataset.state not in RUNNING or dataset.pid == os.getpid() or worker_alive(dataset.pid, dataset.name, queued_at):
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
    if dataset.pid == os.getpid() or not stop_worker(dataset.pid, dataset.name):
        # no other worker to signal (not started yet, or generating in this process): marked cancelled here; a worker
        # that starts after this finds its dataset no longer queued and does nothing
        update_dataset(connection, name, state="cancelled", pid=None, error=CANCELLED)
    return get_dataset(connection, name)


# --- the worker -------------------------------------------------------------------------------------------------


def run_worker(database_path: Path, name: str) -> int:
    """Generate the dataset the app queued; the exit code."""
    cancel_on_sigterm()
    connection = database.connect(database_path)

    def work() -> None:
        dataset = get_dataset(connection, name)
        if dataset.state != "queued":  # cancelled before this worker started
            raise SftDataError(f"SFT dataset {name} is {dataset.state}, not queued: nothing to generate")
        update_dataset(connection, name, state="generating", pid=os.getpid(),
                       progress={"done": 0, "total": 0, "message": "loading the models"})
        settings = load_settings(**dataset.config["settings"])
        kb = KnowledgeBase.open(settings)
        try:
            generate_dataset(settings, kb, GenerationRequest.from_config(dataset.config), existing=True,
                             on_progress=lambda done, total, message: print(f"[{done}/{total}] {message}", flush=True))
        finally:
            kb.connection.close()

    state, error = run_work(work, expected=(SftDataError,))
    if state == "cancelled":
        update_dataset(connection, name, state="cancelled", pid=None, error=error)
    elif state == "failed" and get_dataset(connection, name).state in RUNNING:  # else marked by generate_dataset
        update_dataset(connection, name, state="failed", pid=None, error=error)
    print(f"deploywise: SFT dataset {name} {'generated' if state == 'succeeded' else state}"
          + (f": {error}" if error else ""), flush=True)
    return 0 if state == "succeeded" else 1


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: python -m training.sft_worker <knowledge database> <dataset name>", file=sys.stderr)
        return 2
    return run_worker(Path(sys.argv[1]), sys.argv[2])


if __name__ == "__main__":
    sys.exit(main())
