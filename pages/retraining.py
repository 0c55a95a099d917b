"""Retraining (admin): continual pretraining (CPT) of the LLM on the knowledge base, and supervised fine-tuning (SFT)
of a CPT version on an SFT dataset, launched and followed here.

Choose the recipe, the starting model and the settings (checked by `training.config` before anything runs), preview
the data the job will learn from (CPT: the dataset snapshot and what is new since the last run; SFT: the datasets and
their accepted pairs), launch; then follow the jobs of both recipes: a table refreshed every few seconds while a job
is unfinished, and for one job its progress, loss, learning rate and evaluation curves (from its MLflow run), its
log tail, Cancel, and the LLM version it made.

Layout only: the work happens in `training.job_launch`, `training.job_following`, `training.dataset_snapshot`,
`training.sft_data`, and what the page shows in `ui.retraining_form`, `ui.retraining_inputs` and `ui.retraining_jobs`.
The database is opened for this run (and for each refresh of the jobs panel) and closed at its end. Errors reaching
Ray or MLflow show as one warning line; the page stays up.
"""

import streamlit as st

from engine.access.roles import current_identity
from engine.answering import feedback_review as review
from engine.core.errors import first_line
from engine.core.markdown import escape_markdown
from engine.knowledge.knowledge_base import KnowledgeBase
from engine.lifecycle.training_jobs import list_jobs
from training.config import QUANTIZATIONS, ConfigError
from training.dataset_snapshot import SnapshotError, changes_since, list_snapshots
from training.job_following import cancel_job, job_logs, job_progress, refresh_jobs
from training.job_launch import choose_snapshot, submit_cpt, submit_sft
from training.ray_cluster import JobError
from training.sft_data import list_datasets
from ui import retraining_form as form_view
from ui import retraining_inputs as inputs_view
from ui import retraining_jobs as jobs_view
from ui.admin_page import changed, flash, start_admin_page
from ui.formatting import format_time, progress_fraction

JOB_KEY, RECIPE_KEY = "training_job", "training_recipe"


def base_key(kind: str) -> str:
    """The session key of the recipe's configuration mapping under the form (the YAML's keys the form lacks)."""
    return f"{kind}_base"



def use_config(config) -> None:
    """Make a checked config the form's content (called before the form's widgets exist in the run)."""
    st.session_state[base_key(config.kind)] = config.to_dict()
    for key, value in form_view.form_values(config).items():
        st.session_state[form_view.widget_key(key, config.kind)] = value


def uploaded_yaml(kind: str) -> None:
    upload = st.session_state.get(f"{kind}_yaml_file")
    if upload is None:
        return
    try:
        st.session_state[f"{kind}_yaml"] = upload.getvalue().decode("utf-8")
    except UnicodeDecodeError:
        st.session_state[f"{kind}_yaml_problem"] = f"{escape_markdown(upload.name)} is not UTF-8 text; the editor is unchanged."


def apply_yaml(kind: str) -> None:
    try:
        config = form_view.config_from_yaml_text(st.session_state.get(f"{kind}_yaml", ""), kind)
    except ConfigError as error:
        st.session_state[f"{kind}_yaml_problem"] = form_view.problems_markdown("The YAML was not applied", error)
    else:
        use_config(config)
        flash("The YAML configuration is in the form.")


def yaml_editor(kind: str) -> None:
    with st.expander("Upload or edit the YAML configuration"):
        st.caption("Keys the form does not show (warmup, scheduler, target modules, Ray workers...) come from here. "
                   "Apply puts the whole configuration into the form; every key is checked first.")
        st.file_uploader("YAML file", type=["yaml", "yml"], key=f"{kind}_yaml_file", on_change=uploaded_yaml, args=(kind,))
        st.session_state.setdefault(f"{kind}_yaml", form_view.default_yaml_text(kind))
        st.text_area("Configuration (YAML)", key=f"{kind}_yaml", height=320)
        st.button("Apply to the form", on_click=apply_yaml, args=(kind,))
        if problem := st.session_state.pop(f"{kind}_yaml_problem", None):
            st.error(problem)  # already markdown, escaped where it quotes the upload


def registry_versions(settings) -> list:
    try:
        return inputs_view.llm_versions(settings)
    except Exception as error:  # MLflow unreachable: training from the base model still works
        st.warning(f"Cannot list the LLM versions ({escape_markdown(first_line(error))}); only the base model is offered.")
        return []


def recipe_form(kind: str, first_row, sequence_help: str) -> tuple[dict, bool, bool]:
    """A recipe's form: its own first row (`first_row(left, middle, right)` draws it), then the adapter and
    optimisation settings both recipes share. Returns the values by config key, and whether Check or Launch was pressed."""
    def key(name):
        return form_view.widget_key(name, kind)

    with st.form(f"{kind}_form"):
        first_row(*st.columns(3))
        st.markdown("**Adapter**")
        columns = st.columns(4)
        columns[0].selectbox("Quantization", QUANTIZATIONS, key=key("quantization"), help="4bit: QLoRA (NF4 base weights)")
        columns[1].number_input("LoRA r", key=key("lora.r"), step=1)
        columns[2].number_input("LoRA alpha", key=key("lora.alpha"), step=1)
        columns[3].number_input("LoRA dropout", key=key("lora.dropout"), step=0.01, format="%.2f")
        st.markdown("**Optimisation**")
        columns = st.columns(4)
        columns[0].text_input("Learning rate", key=key("learning_rate"),
                              help={"cpt": "e.g. 2e-5 (CPT's default)", "sft": "e.g. 2e-4 (SFT's default)"}.get(kind))
        columns[1].number_input("Epochs", key=key("epochs"), step=0.5, format="%.2f")
        columns[2].number_input("Max steps", key=key("max_steps"), step=1, help="-1: no cap; otherwise the run stops there")
        columns[3].number_input("Batch size", key=key("batch_size"), step=1, help="Rows per step and worker")
        columns = st.columns(4)
        columns[0].number_input("Gradient accumulation", key=key("gradient_accumulation_steps"), step=1)
        columns[1].number_input("Sequence length", key=key("max_seq_length"), step=64, help=sequence_help)
        columns[2].number_input("Eval steps", key=key("eval_steps"), step=1, help="Validation loss and perplexity every N steps")
        columns[3].number_input("Save steps", key=key("save_steps"), step=1, help="Checkpoint every N steps (a multiple of eval steps)")
        check_column, launch_column = st.columns(2)
        check = check_column.form_submit_button("Check and preview", width="stretch")
        launch = launch_column.form_submit_button("Launch", type="primary", width="stretch")
    return {name: st.session_state[key(name)] for name in form_view.FORM_KEYS[kind]}, check, launch


def cpt_form(settings, snapshots) -> tuple[dict, bool, bool]:
    key = form_view.widget_key
    starts = inputs_view.start_options(registry_versions(settings), st.session_state[key("start_from")])
    snapshot_choices = inputs_view.snapshot_options(snapshots, st.session_state[key("snapshot")])

    def first_row(left, middle, right):
        left.selectbox("Start from", list(starts), key=key("start_from"), format_func=starts.get,
                       help="The base model, or an LLM version to continue training (it is merged first).")
        middle.selectbox("Snapshot", list(snapshot_choices), key=key("snapshot"), format_func=snapshot_choices.get,
                         help="The frozen data the job learns from.")
        right.number_input("Replay ratio", key=key("replay_ratio"), step=0.05, format="%.2f",
                           help="Share of general text in the training tokens of a new snapshot (at least 0, below 1).")

    return recipe_form("cpt", first_row, "Packed block length in tokens")


def sft_form(settings, datasets) -> tuple[dict, bool, bool]:
    def key(name):
        return form_view.widget_key(name, "sft")

    starts = inputs_view.sft_start_options(registry_versions(settings), st.session_state[key("start_from")])
    choices = inputs_view.dataset_options(datasets, st.session_state[key("dataset")])

    def first_row(left, middle, right):
        left.selectbox("Start from", list(starts), key=key("start_from"), format_func=starts.get,
                       help="A CPT version (merged into the base model first); the newest by default.")
        middle.selectbox("Dataset", list(choices), key=key("dataset"), format_func=choices.get,
                         help="The SFT dataset whose accepted pairs the job learns to answer.")
        right.number_input("Validation share", key=key("validation_share"), step=0.05, format="%.2f",
                           help="Share of the pairs held out for the evaluation loss (above 0, at most 0.5).")

    return recipe_form("sft", first_row, "System prompt, instruction and answer in tokens; a longer pair loses its answer's end")


def launch_job(settings, connection, config) -> None:
    user = current_identity().name
    submit = submit_cpt if config.kind == "cpt" else submit_sft
    with st.spinner("Launching: data, MLflow run, Ray job (starting the local Ray head takes ~10 s the first time)"):
        try:
            job = submit(settings, connection, config, created_by=user)
        except JobError as error:
            st.error(f"Not launched: {escape_markdown(first_line(error))}")
            return
        except Exception as error:  # MLflow or the disk said no
            st.error(f"Not launched: {escape_markdown(f'{type(error).__name__}: {first_line(error)}')}")
            return
    st.session_state[JOB_KEY] = job.id
    changed(f"Job {job.id} launched on {job.data}.")


def checked_config(settings, connection, kind: str, values: dict, check: bool, launch: bool):
    """The form's config, launched when asked; None (and the problems, when a button was pressed) if it is invalid."""
    try:
        config = form_view.config_from_form(st.session_state[base_key(kind)], values, kind)
    except ConfigError as error:
        if check or launch:
            st.error(form_view.problems_markdown("Not launched; fix these settings" if launch else "Fix these settings", error))
        return None
    if launch:
        launch_job(settings, connection, config)
    st.download_button("Download these settings as YAML", form_view.config_yaml(config), file_name=f"{kind}.yaml",
                       mime="application/yaml")
    return config


def dataset_preview(datasets, config) -> None:
    st.subheader("Dataset")
    if not datasets:
        st.info("No SFT dataset yet: generate and review one first; the job trains on its accepted pairs.")
        return
    st.dataframe(inputs_view.datasets_frame(datasets), hide_index=True, width="stretch")
    if config is not None:
        st.caption(inputs_view.dataset_caption(datasets, config))


def cached(name: str, key: tuple, compute):
    """compute() once per key in this session; a failure is kept (and shown) as the result too."""
    store = st.session_state.setdefault(name, {})
    if key not in store:
        if len(store) > 8:
            store.clear()
        try:
            store[key] = compute()
        except Exception as error:  # no documents, an unreadable snapshot or tokenizer: said, not crashed
            store[key] = error
    return store[key]


def problem_text(error: Exception) -> str:
    return first_line(error) if isinstance(error, SnapshotError) else f"{type(error).__name__}: {first_line(error)}"


def snapshot_preview(settings, connection, config, jobs, snapshots) -> None:
    st.subheader("Snapshot")
    fingerprint = inputs_view.knowledge_fingerprint(connection)
    if config is None:
        st.info("The preview follows the form once its settings are valid.")
    else:
        with st.spinner("Counting the snapshot's documents and tokens"):
            key = (config.snapshot, config.replay_ratio, fingerprint, settings.base_model, snapshots[0].id if snapshots else None)
            preview = cached("cpt_previews", key,
                             lambda: choose_snapshot(settings, config.snapshot, config.replay_ratio, write=False))
        if isinstance(preview, Exception):
            st.warning(f"No snapshot to train on: {problem_text(preview)}")
        else:
            summary = inputs_view.snapshot_summary(preview.manifest)
            for column, (label, value) in zip(st.columns(len(summary)), summary.items(), strict=True):
                column.metric(label, value)
            st.dataframe(inputs_view.snapshot_table(preview.manifest), hide_index=True, width="stretch")
            written = "already written: a job on it learns exactly this data" if preview.exists else "written at launch"
            st.caption(f"Snapshot `{preview.id}` ({written}) · replay ratio {preview.manifest['config']['replay_ratio']:g} "
                       f"of general text ({preview.manifest['config']['replay_source']['name']}).")
    reference, job = inputs_view.reference_snapshot(jobs, snapshots)
    if reference is None:
        st.caption("No snapshot has been made yet: everything in the knowledge base is new.")
        return
    changes = cached("cpt_changes", (reference.id, fingerprint),
                     lambda: changes_since(reference, KnowledgeBase(connection, embedder=None)))
    if isinstance(changes, Exception):
        st.warning(f"Cannot compare with snapshot `{reference.id}`: {problem_text(changes)}")
        return
    since = f"job {job.id}'s snapshot `{reference.id}`" if job else f"snapshot `{reference.id}`"
    st.markdown(f"**New since {since}:** {inputs_view.changes_summary(changes)} document(s)")
    if rows := inputs_view.changes_rows(changes):
        with st.expander("Which documents"):
            st.dataframe(rows, hide_index=True, width="stretch")


def jobs_panel(settings, polling: bool) -> None:
    """The jobs table and the chosen job; a fragment, rerun every few seconds while a job is unfinished."""
    connection = jobs_view.open_database(settings)
    try:
        try:
            problems = refresh_jobs(settings, connection)
        except Exception as error:  # a Ray or MLflow failure must not take the page down
            problems = [f"{type(error).__name__}: {first_line(error)}"]
        for problem in problems:
            st.warning(f"Job states may be out of date: {problem}")
        jobs = list_jobs(connection)
        if polling != bool(jobs_view.unfinished(jobs)):
            st.rerun()  # start or stop polling
        if not jobs:
            st.info("No training job yet: launch one above.")
            return
        progress, problems = jobs_view.table_progress(settings, jobs, st.session_state.setdefault("training_progress", {}), job_progress)
        if problems:
            st.warning(f"Progress unavailable for {len(problems)} job(s): {problems[0]}")
        st.dataframe(jobs_view.jobs_frame(jobs, progress, settings.llm_registry_name), hide_index=True, width="stretch")
        by_id = {job.id: job for job in jobs}
        if st.session_state.get(JOB_KEY) not in by_id:
            st.session_state[JOB_KEY] = jobs[0].id
        chosen = by_id[st.selectbox("Job", list(by_id), key=JOB_KEY, format_func=lambda i: jobs_view.job_label(by_id[i]))]
        job_detail(settings, connection, chosen, progress.get(chosen.id))
    finally:
        connection.close()


def job_detail(settings, connection, job, progress) -> None:
    with st.container(border=True):
        st.markdown(f"**{escape_markdown(job.id)}** · " + escape_markdown(
            f"{job.state} · started {format_time(job.created_at)}" + (f" by {job.created_by}" if job.created_by else "")
            + f" · from {'the base model' if job.start_from == 'base' else 'version ' + job.start_from}"
            + f" · {job.kind.upper()} on {job.data}"))
        if job.state == "succeeded":
            version = jobs_view.version_label(settings.llm_registry_name, job) or "no version recorded"
            url = jobs_view.model_version_url(settings, job.llm_version) if job.llm_version else None
            label = f"[{escape_markdown(version)}](<{url}>)" if url else escape_markdown(version)
            st.success(f"LLM version **{label}** (candidate) · MLflow run {escape_markdown(job.mlflow_run_id)}")
        elif job.state == "failed":
            st.error(f"Failed: {escape_markdown(job.message or 'no reason recorded')}")  # Ray's or the recipe's error
        elif job.state == "cancelled":
            st.info(f"Cancelled: {escape_markdown(job.message or '')}")
        if progress is None:
            st.warning("Its MLflow run cannot be read now; progress and curves are unavailable.")
        else:
            fraction = progress_fraction(progress.step, progress.total_steps, finished=job.state == "succeeded")
            st.progress(fraction, text=escape_markdown(jobs_view.progress_text(progress, job)))
            curves = {
                "Training loss": jobs_view.curve_frame({"loss": progress.loss}),
                "Learning rate": jobs_view.curve_frame({"learning rate": progress.learning_rate}),
                "Evaluation perplexity": jobs_view.curve_frame(progress.eval_perplexity),
            }
            for column, (title, frame) in zip(st.columns(3), curves.items(), strict=True):
                with column:
                    st.markdown(f"**{title}**")
                    if frame.empty:
                        st.caption("Nothing logged yet.")
                    else:
                        st.line_chart(frame, x_label="step", height=220)
        if not job.finished and job.state != "cancelling" and st.button("Cancel job", key=f"cancel_{job.id}"):
            try:
                cancel_job(settings, connection, job.id)
            except JobError as error:
                st.error(f"Not cancelled: {escape_markdown(error)}")
            else:
                changed(f"Job {job.id} is being cancelled.")
        with st.expander("Log tail"):
            try:
                st.code(job_logs(settings, job.id, jobs_view.LOG_TAIL_LINES) or "(empty)", language=None, height=320)
            except JobError as error:
                st.caption(escape_markdown(f"No log: {error}. The job's record says: {job.log_location}."))
        with st.expander("Configuration"):
            st.caption(escape_markdown(f"config hash {job.config_hash} · MLflow run {job.mlflow_run_id} · Ray {job.ray_address}"))
            st.json(job.config, expanded=False)


settings = start_admin_page(
    "pages/retraining.py",
    "Continual pretraining (CPT) teaches the LLM the knowledge base; supervised fine-tuning (SFT) then teaches a "
    "CPT version how to answer, from an SFT dataset. Each is a LoRA adapter trained as a Ray job; each successful "
    "job registers a new candidate LLM version.")

recipe = st.radio("Recipe", list(form_view.RECIPES), key=RECIPE_KEY, format_func=form_view.RECIPES.get, horizontal=True)
if base_key(recipe) not in st.session_state:
    default, problem = form_view.default_config(recipe)
    if problem:
        st.error(f"{form_view.config_path(recipe).name} cannot be used ({problem}); the form starts from the built-in defaults.")
    st.session_state[base_key(recipe)] = default.to_dict()
for name, value in form_view.form_values(form_view.config_from_form(st.session_state[base_key(recipe)], {}, recipe)).items():
    st.session_state.setdefault(form_view.widget_key(name, recipe), value)  # kept while the admin edits; reset after navigation

connection = jobs_view.open_database(settings)
try:
    try:
        snapshots = list_snapshots(settings.workspace)
    except Exception as error:  # a damaged snapshot folder must not hide the jobs
        snapshots = []
        st.warning(f"Cannot list the written snapshots: {problem_text(error)}")
    reference = review.trained_snapshot(list_jobs(connection), snapshots)  # what the last job learns from
    changes = reference and cached("cpt_changes", (reference.id, inputs_view.knowledge_fingerprint(connection)),
                                   lambda: changes_since(reference, KnowledgeBase(connection, embedder=None)))
    if (suggestion := review.retraining_suggestion(connection, reference, changes)).due:
        st.info(suggestion.message, icon=":material/tips_and_updates:")
    st.subheader(f"New {recipe.upper()} job")
    yaml_editor(recipe)
    if recipe == "cpt":
        config = checked_config(settings, connection, recipe, *cpt_form(settings, snapshots))
        snapshot_preview(settings, connection, config, list_jobs(connection), snapshots)
    else:
        datasets = list_datasets(connection)
        dataset_preview(datasets, checked_config(settings, connection, recipe, *sft_form(settings, datasets)))
    jobs = list_jobs(connection)
finally:
    connection.close()

st.subheader("Jobs")
polling = jobs_view.polling_interval(jobs)
st.fragment(jobs_panel, run_every=polling)(settings, polling is not None)
