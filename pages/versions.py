"""LLM versions (admin): every version of the registry with its lineage, status, gate verdict, evaluation and the
answers and flags it got; promote one to champion (the chat follows without a restart), roll back, archive.

Layout only: the catalog is read by `engine.lifecycle.version_catalog` and laid out by `ui.versions_views`; the
actions in `engine.lifecycle.version_actions` also refuse what must not happen (promoting without a GO and without a
reason, archiving the champion...); a refusal or an MLflow failure shows as one line and the page stays up. A change
is stored, then the page reruns so the table shows it.
"""

import streamlit as st

from engine.access.roles import current_identity
from engine.core.errors import first_line
from engine.core.markdown import escape_markdown
from engine.lifecycle import version_records
from engine.lifecycle.version_actions import archive, promote, rollback
from engine.lifecycle.version_catalog import overview
from engine.lifecycle.version_records import ARCHIVED, FAILED, MAX_REASON_CHARS, VersionError
from engine.llm.versions import CANDIDATE
from training.export_artifacts import download_path, published_exports, safetensors_zip
from training.export_formats import FORMATS, ExportError, slug
from training.export_worker import export_jobs, start_export_job
from ui.admin_page import changed, start_admin_page
from ui.formatting import format_time
from ui.versions_views import history_table, metrics_rows, versions_table

CHOSEN_KEY = "versions_chosen"



def actor() -> str:
    """Who acts, as recorded with the action: the logged-in administrator's email or user name."""
    return current_identity().name or "admin"


def target_text(view, target: str) -> str:
    return version_records.target_text(view.registry_name, target, view.base_label)


def act(action, success) -> None:
    """Run an engine action; on success rerun with success(outcome) as the message, else show why not."""
    try:
        outcome = action()
    except VersionError as error:
        st.error(escape_markdown(error))
    except Exception as error:  # MLflow or the disk said no: one line, the page stays up
        st.error(escape_markdown(f"{type(error).__name__}: {first_line(error)}"))
    else:
        changed(success(outcome))


def champion_panel(settings, view) -> None:
    st.markdown(f"**The chat serves** {escape_markdown(view.serving)}"
                + ("" if view.champion else " (no version holds the champion alias yet)"))
    if view.rollback_target:
        target = target_text(view, view.rollback_target)
        if st.button(escape_markdown(f"Roll back to {target}"), key="rollback",
                     help=escape_markdown(f"Gives the champion alias back to {target}, which {view.serving} replaced.")):
            act(lambda: rollback(settings, actor()),
                lambda served: f"Rolled back: the chat serves {target_text(view, served)} within a minute.")


def detail(settings, view, record) -> None:
    with st.container(border=True):
        st.markdown(f"**{escape_markdown(record.label)}** · " + escape_markdown(
            record.status + (f" · {record.training.upper()}" if record.training else "")
            + f" · registered {format_time(record.created_at)}" + (f" by {record.created_by}" if record.created_by else "")))
        parent = f"version {record.parent_version}" if record.parent_version else "none (trained on the base)"
        st.markdown(escape_markdown(  # every field is an MLflow tag
            f"Base {record.base_model or '?'} · parent {parent} · data {record.data or '?'} · config {record.config_hash or '?'}")
            + "\n\n" + escape_markdown(
            f"Job {record.job_id or '?'}" + (f" ({record.job_state})" if record.job_state else "")
            + f" · MLflow run {record.run_id or '?'}" + (f" ({record.run_status})" if record.run_status else "")))
        gate = record.gate
        reasons = "".join(f"\n- {escape_markdown(reason)}" for reason in gate.reasons)
        if gate.verdict is None:
            st.info("Not evaluated yet: promoting it needs a written reason.")
        elif gate.passed:
            st.success(escape_markdown(f"Gate: GO (evaluation {gate.evaluation_id})") + reasons)
        else:
            st.error(escape_markdown(f"Gate: {gate.verdict} (evaluation {gate.evaluation_id})") + reasons)
        if rows := metrics_rows(view, record):
            st.dataframe(rows, hide_index=True)
        usage = record.usage
        st.caption(f"{usage.answers} chat answers · {usage.thumbs_up} thumbs up · {usage.flags} flags")
        if record.promoted_at:
            st.caption(escape_markdown(f"Last promoted {format_time(record.promoted_at)} by {record.promoted_by} past gate "
                                       f"{record.promotion_gate}" + (f": “{record.promotion_reason}”" if record.promotion_reason else "")))
        if record.status == CANDIDATE:
            reason = st.text_area("Reason for promoting" + ("" if gate.passed else " (required: no GO verdict)"),
                                  key=f"reason_{record.number}", max_chars=MAX_REASON_CHARS)
            if st.button("Promote to champion", key=f"promote_{record.number}", type="primary"):
                act(lambda: promote(settings, record.number, actor=actor(), reason=reason),
                    lambda _: f"{record.label} is the champion; the chat switches to it within a minute.")
        if record.status in (CANDIDATE, FAILED):
            if st.button("Archive", key=f"archive_{record.number}", help="Retire it: it is no longer promoted or rolled back to."):
                act(lambda: archive(settings, record.number, actor()), lambda _: f"{record.label} archived.")
        elif record.status == ARCHIVED:
            st.caption(escape_markdown(f"Archived {format_time(record.archived_at)} by {record.archived_by or '?'}."))
        if record.run_id:
            export_panel(settings, record)


def export_panel(settings, record) -> None:
    """Start an export (it runs out of this process), follow it, download what is published on the version's run."""
    st.markdown("**Export**")
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    fmt = left.selectbox("Format", FORMATS, key=f"export_format_{record.number}",
                         help="safetensors: the merged model as a Hugging Face folder (zip); "
                              "GGUF f16 or q8_0: one file for llama.cpp and Ollama, with a Modelfile")
    if right.button("Export", key=f"export_{record.number}"):
        try:
            start_export_job(settings, record.number, fmt, created_by=actor())
        except ExportError as error:
            st.error(escape_markdown(error))
        else:
            changed(f"Exporting {record.label} as {fmt}: the files are offered here once checked.")
    jobs = export_jobs(settings, record.number)
    if any(not job.finished for job in jobs):
        export_progress(settings, record.number)
    elif jobs and jobs[0].state == "failed":
        st.error(escape_markdown(f"The last export ({jobs[0].format}) failed: {jobs[0].error}"))
    try:
        published = published_exports(settings, record.run_id)
    except Exception as error:  # MLflow said no: one line, the page stays up
        st.error(escape_markdown(f"Cannot list the exports of {record.label}: {type(error).__name__}: {first_line(error)}"))
        return
    for item in published:
        check, main = item.check, item.main_file
        st.caption(f"**{item.format}** · {format_time(item.created_at)} · {main.size / 1e6:.1f} MB · "
                   f"sha256 `{main.sha256[:16]}` · logits check over {check.positions} positions: min cosine "
                   f"{check.min_cosine:.6f}, top-1 agreement {check.top1_agreement:.1%}")
        if item.format == "safetensors":
            name = f"{slug(item.version)}-safetensors.zip"
            st.download_button(f"Download {name}", lambda item=item: safetensors_zip(settings, item).read_bytes(),
                               file_name=name, mime="application/zip", on_click="ignore",
                               key=f"download_{record.number}_{item.format}")
        for file in item.files if item.format != "safetensors" else ():
            st.download_button(f"Download {file.name}",
                               lambda item=item, name=file.name: download_path(settings, item, name).read_bytes(),
                               file_name=file.name, on_click="ignore", key=f"download_{record.number}_{item.format}_{file.name}")


@st.fragment(run_every=2)
def export_progress(settings, number: str) -> None:
    running = [job for job in export_jobs(settings, number) if not job.finished]
    if not running:
        st.rerun()  # the whole page: the finished export's downloads show
    for job in running:
        done, total = job.progress["done"], max(job.progress["total"], 1)
        st.progress(done / total, text=escape_markdown(f"{job.format}: {job.progress['message']}"))


settings = start_admin_page(
    "pages/versions.py",
    "Every LLM version trained for the chat, with its lineage, gate verdict and the answers it wrote. "
    "Promoting moves the champion alias; the chat switches to it without a restart.")

try:
    view = overview(settings)
except VersionError as error:
    st.error(escape_markdown(error))
    st.stop()
except Exception as error:  # anything else MLflow may raise: said, not crashed
    st.error(escape_markdown(f"Cannot read the LLM versions: {type(error).__name__}: {first_line(error)}"))
    st.stop()

for notice in view.notices:
    st.warning(escape_markdown(notice))
champion_panel(settings, view)
if not view.versions:
    st.info("No LLM version yet: a CPT job on the Retraining page registers one.")
else:
    st.dataframe(versions_table(view), hide_index=True, width="stretch")
base = view.base_usage
st.caption(escape_markdown(f"Base model {view.base_label}: {base.answers} answers, {base.flags} flags" + "".join(
    f" · {label}: {usage.answers} answers, {usage.flags} flags" for label, usage in view.other_usage.items())))
if view.versions:
    numbers = [record.number for record in view.versions]
    if st.session_state.get(CHOSEN_KEY) not in numbers:
        st.session_state[CHOSEN_KEY] = numbers[0]
    chosen = st.selectbox("Version", numbers, key=CHOSEN_KEY,
                          format_func=lambda n: f"{view.version(n).label} · {view.version(n).status}")
    detail(settings, view, view.version(chosen))
if view.history:
    with st.expander("History"):
        st.dataframe(history_table(view), hide_index=True, width="stretch")
