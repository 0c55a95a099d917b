"""Evaluation (admin): compare LLM versions (the base included) side by side and apply the promotion gate.

Choose versions and start an evaluation: it runs in a process of its own (`eval.worker`), so it goes on through page
reloads; its progress is shown here while it runs. Results come from MLflow: the side-by-side table with each
version's GO/NO-GO and reasons, charts of perplexity changes against the base model (domain and the forgetting
check), per-category accuracy and latency, every golden item with every version's answer, and past evaluations.

Layout only: the work happens in `eval.worker`, `eval.results` and `ui.evaluation_views`.
"""

import streamlit as st

from engine.access.roles import current_identity
from engine.answering.golden_set import DEFAULT_GOLDEN, GoldenError, load_golden
from engine.core.errors import first_line
from engine.core.markdown import escape_markdown
from eval.plan import EvaluationError
from eval.results import evaluation_history, load_evaluation, load_items
from eval.worker import cancel_evaluation, list_evaluation_jobs, start_evaluation
from ui import evaluation_views
from ui.admin_page import changed, start_admin_page
from ui.formatting import progress_fraction

CHOSEN_KEY = "eval_chosen"



def new_evaluation(settings) -> None:
    try:
        options = evaluation_views.version_options(settings)
    except Exception as error:  # MLflow unreachable: the base model can still be evaluated
        st.warning(f"Cannot list the LLM versions ({escape_markdown(first_line(error))}); only the base model is offered.")
        options = {"base": "base model"}
    with st.form("eval_form"):
        versions = st.multiselect("LLM versions", list(options), default=evaluation_views.default_versions(options),
                                  format_func=options.get, key="eval_versions",
                                  help="Every version answers the same golden set and is measured on the same held-out text.")
        left, middle, right = st.columns(3)
        golden = left.text_input("Golden set (JSONL)", value=str(DEFAULT_GOLDEN), key="eval_golden")
        per_category = middle.number_input("Items per category (0: all)", min_value=0, step=1, key="eval_per_category",
                                           help="A quick look; only a run on the whole golden set can get GO.")
        max_new_tokens = right.number_input("Longest answer (tokens)", min_value=1, max_value=8192, step=16,
                                            value=settings.llm_max_new_tokens, key="eval_max_new_tokens")
        start = st.form_submit_button("Run evaluation", type="primary")
    try:
        golden_set = load_golden(golden)
        count = len(golden_set.select(per_category=per_category or None))
        st.caption(escape_markdown(f"{count} of {len(golden_set.items)} golden items per version "
                                   f"({', '.join(golden_set.categories())}). On a CPU each answer takes from seconds to minutes."))
    except GoldenError as error:
        st.caption(f"The golden set cannot be used: {escape_markdown(error)}")
    if start:
        user = current_identity().name
        with st.spinner("Checking the versions, the golden set, the gate and the held-out text"):
            try:
                job = start_evaluation(settings, versions, golden=golden, per_category=per_category or None,
                                       max_new_tokens=int(max_new_tokens), created_by=user)
            except EvaluationError as error:
                st.error(f"Not started: {escape_markdown(error)}")
                return
            except Exception as error:  # MLflow or the disk said no
                st.error(f"Not started: {escape_markdown(f'{type(error).__name__}: {first_line(error)}')}")
                return
        changed(f"Evaluation {job.id} started: {', '.join(job.request['versions'])}.")


def running_panel(settings, polling: bool) -> None:
    """Evaluations started here; rerun every few seconds while one is unfinished."""
    jobs = list_evaluation_jobs(settings)
    if polling != evaluation_views.unfinished(jobs):
        st.rerun()  # start or stop polling
    if not jobs:
        st.info("No evaluation started from here yet.")
        return
    st.dataframe(evaluation_views.jobs_frame(jobs), hide_index=True, width="stretch")
    for job in jobs:
        if job.finished:
            continue
        with st.container(border=True):
            versions = ", ".join(job.request.get("versions", []))
            st.markdown(f"**{escape_markdown(job.id)}** · " + escape_markdown(f"{job.state} · {versions}"))
            fraction = progress_fraction(job.progress.get("done"), job.progress.get("total"), finished=job.state == "succeeded")
            st.progress(fraction, text=escape_markdown(evaluation_views.progress_text(job)))
            if st.button("Cancel", key=f"eval_cancel_{job.id}"):
                try:
                    cancel_evaluation(settings, job.id)
                except (KeyError, ValueError) as error:
                    st.error(f"Not cancelled: {escape_markdown(first_line(error))}")
                else:
                    changed(f"Evaluation {job.id} is being cancelled; the versions it finished stay in the results.")


def results(settings, history) -> None:
    if not history:
        st.info("No evaluation has finished yet.")
        return
    by_id = {summary.evaluation_id: summary for summary in history}
    if st.session_state.get(CHOSEN_KEY) not in by_id:
        st.session_state[CHOSEN_KEY] = history[0].evaluation_id
    chosen = st.selectbox("Evaluation", list(by_id), key=CHOSEN_KEY, format_func=lambda i: evaluation_views.history_label(by_id[i]))
    versions = load_evaluation(settings, chosen)
    for column, version in zip(st.columns(len(versions)), versions, strict=True):
        with column:
            (st.success if version.verdict == "GO" else st.error)(
                f"**{escape_markdown(f'{version.label}: {version.verdict}')}** · {escape_markdown(version.llm_label)}")
            st.markdown("\n".join(f"- {escape_markdown(reason)}" for reason in version.reasons))
    st.dataframe(evaluation_views.comparison_frame(versions), hide_index=True, width="stretch")
    charts = {"Perplexity vs base model (%)": evaluation_views.perplexity_change_frame(versions),
              "Accuracy per category": evaluation_views.category_frame(versions),
              "Latency per answer (ms)": evaluation_views.latency_frame(versions)}
    for column, (title, frame) in zip(st.columns(3), charts.items(), strict=True):
        with column:
            st.markdown(f"**{title}**")
            if frame.empty:
                st.caption("Nothing to compare (no registry version, or nothing measured).")
            else:
                st.bar_chart(frame, stack=False, height=260)
    drill_down(settings, versions)


def drill_down(settings, versions) -> None:
    st.markdown("**Golden items**")
    cache = st.session_state.setdefault("eval_items", {})
    if len(cache) > 12:
        cache.clear()
    items = {}
    for version in versions:
        if version.run_id not in cache:
            try:
                cache[version.run_id] = load_items(settings, version.run_id)
            except Exception as error:  # an artifact store that cannot be read now
                st.warning(escape_markdown(f"Cannot read the answers of {version.label}: {first_line(error)}"))
                continue
        items[version.label] = cache[version.run_id]
    if not items:
        return
    table = evaluation_views.items_frame(items)
    st.dataframe(table, hide_index=True, width="stretch")
    rows = table.to_dict("records")
    item_id = st.selectbox("Item", [row["item"] for row in rows], key="eval_item",
                           format_func=lambda i: evaluation_views.item_label(next(r for r in rows if r["item"] == i)))
    for detail in evaluation_views.item_detail(items, item_id):
        with st.container(border=True):
            st.markdown(f"**{escape_markdown(detail['version'])}** {detail['mark']} · " + escape_markdown(
                f"skipped: {detail['skip_reason'] or ''}" if detail["status"] == "skipped" else
                f"{detail['origin']}{'' if detail['llm_asked'] else ' (the LLM was not asked)'} · {detail['latency']}"))
            if detail["status"] == "skipped":
                continue
            st.text(detail["answer"] or "(empty)")
            if detail["llm_asked"]:
                with st.expander("What the chat showed (the decision, then the verified sentences)"):
                    st.text(detail["shown"])
                if detail["problems"]:
                    st.caption(escape_markdown("Explanation cut: " + "; ".join(detail["problems"][:2])))
            if detail["facts"]:
                st.dataframe(detail["facts"], hide_index=True)
            st.caption(evaluation_views.citation_caption(detail))


settings = start_admin_page(
    "pages/evaluation.py",
    "Every version answers the golden set through the chat's own pipeline and is measured on held-out text; "
    "the gate (configs/gate.yaml) says GO or NO-GO. Results are kept in MLflow (experiment deploywise-evaluation).")

st.subheader("New evaluation")
new_evaluation(settings)

st.subheader("Running and recent")
polling = evaluation_views.unfinished(list_evaluation_jobs(settings))
st.fragment(running_panel, run_every=evaluation_views.POLL_SECONDS if polling else None)(settings, polling)

st.subheader("Results")
try:
    history = evaluation_history(settings)
except Exception as error:  # MLflow unreachable: the rest of the page stays up
    history = None
    st.warning(f"Cannot read the evaluations from MLflow: {escape_markdown(first_line(error))}")
if history is not None:
    results(settings, history)
if history:
    st.subheader("History")
    st.dataframe(evaluation_views.history_frame(history), hide_index=True, width="stretch")
