"""SFT data (admin): generate named sets of instruction/output pairs from the knowledge base, review them, export JSONL.

Generate: styles, prompts, the generator (an OpenAI-compatible endpoint or an LLM version in process), counts and
seed; the run goes on in a process of its own (`training.sft_worker`), with its progress shown here and a Cancel
button. Datasets: every named dataset with its pairs by review state and what was dropped, by reason. Review: the
pairs of one dataset, to accept, reject or edit (edits are validated like generated text), accept all shown, and
export the accepted pairs as JSONL (the hash is the dataset id an SFT run records). Chunks: what the sampler draws
from, by source.

Layout only: the work happens in `training.sft_data`, `training.sft_export`, `training.sft_generation_request`,
`training.sft_knowledge_pairs`, `training.sft_worker` and `ui.sft_views`. The database is opened for this run and closed at its end.
"""

import streamlit as st

from engine.access.roles import AccessDenied
from engine.core import database
from engine.core.markdown import escape_markdown
from engine.knowledge.knowledge_base import KnowledgeBase
from training.sft_data import REVIEW_STATES, SftDataError, delete_dataset, list_pairs, review_pairs
from training.sft_export import export_dataset, exports_dir
from training.sft_generation_request import DEFAULT_PROMPTS, KNOWLEDGE_STYLES, STYLES, GenerationRequest
from training.sft_knowledge_pairs import source_groups
from training.sft_worker import RUNNING, cancel_generation, refreshed_datasets, start_generation
from ui import sft_views as views
from ui.admin_page import changed, start_admin_page
from ui.formatting import progress_fraction

POLL_SECONDS, PAGE_SIZE = 2, 200
ALL = "all"



def refused(error: Exception) -> None:
    st.error(f"Nothing was changed: {escape_markdown(str(error).strip(chr(39)))}")


def act(action, message) -> None:
    """Run an admin action; on success rerun with `message` (a function of the action's result when callable), else
    say why it was refused."""
    try:
        result = action()
    except (SftDataError, AccessDenied) as error:
        refused(error)
    else:
        changed(message(result) if callable(message) else message)


def generate_tab(settings, connection) -> None:
    with st.form("sft_generate"):
        left, right = st.columns(2)
        name = left.text_input("Dataset name", placeholder="demo-factual-v1", help="lowercase letters, digits, . _ -")
        styles = right.multiselect("Styles", STYLES, default=["factual", "recommendation", "refusal"])
        counts = st.columns(4)
        per_source = counts[0].number_input("Chunks per source", min_value=1, max_value=100, value=2)
        questions = counts[1].number_input("Questions per use case", min_value=1, max_value=20, value=3)
        seed = counts[2].number_input("Seed", min_value=0, value=0, step=1)
        temperature = counts[3].number_input("Temperature", min_value=0.0, max_value=2.0, value=0.7, step=0.1)
        backend = st.radio("Generator", ["OpenAI-compatible endpoint", "LLM version in process", "No LLM (task styles only)"],
                           horizontal=True)
        url, model, key_env = st.columns(3)
        endpoint = url.text_input("Endpoint base URL", placeholder="http://localhost:11434/v1")
        model_name = model.text_input("Model", placeholder="llama3.1:8b")
        api_key_env = key_env.text_input("API key environment variable", placeholder="OPENROUTER_API_KEY",
                                         help="the name of the variable, never the key (the key is not stored): one of "
                                              f"{', '.join(settings.endpoint_key_vars) or 'none'} (DEPLOYWISE_ENDPOINT_KEY_VARS)")
        version = st.text_input("LLM version (in process)", value="champion", help="base, champion or a version number")
        options = st.columns(3)
        paraphrase = options[0].checkbox("Paraphrase recommendation questions with the LLM", value=True)
        rewrite = options[1].checkbox("Use the LLM's recommendation when it passes the verifier", value=False)
        corrections = options[2].checkbox("Add accepted feedback corrections", value=True)
        with st.expander("Prompts of the knowledge styles ({chunk}, {source_id} and {title} are filled in)"):
            prompts = {style: st.text_area(style, DEFAULT_PROMPTS[style], height=180, key=f"sft_prompt_{style}")
                       for style in KNOWLEDGE_STYLES}
        start = st.form_submit_button("Generate", type="primary")
    if not start:
        return
    request = GenerationRequest(
        name=name.strip(), styles=tuple(styles), per_source=int(per_source), seed=int(seed),
        endpoint=endpoint.strip() or None if backend.startswith("OpenAI") else None,
        model=model_name.strip() or None, api_key_env=api_key_env.strip() or None,
        llm_version=version.strip() or None if backend.startswith("LLM") else None,
        prompts={style: text for style, text in prompts.items() if text != DEFAULT_PROMPTS[style]},
        questions_per_use_case=int(questions), paraphrase=paraphrase, rewrite_recommendations=rewrite,
        include_corrections=corrections, temperature=float(temperature))
    with st.spinner("Checking the request and the generator"):
        act(lambda: start_generation(settings, connection, request),
            f"Generation of {request.name} started; follow it under Datasets.")


def running_panel(settings, polling: bool) -> None:
    """Runs under way, refreshed every few seconds while one is unfinished."""
    connection = database.connect(settings.knowledge_db)
    try:
        running = [d for d in refreshed_datasets(connection) if d.state in RUNNING]
        if polling != bool(running):
            st.rerun()
        for dataset in running:
            with st.container(border=True):
                st.markdown(f"**{escape_markdown(dataset.name)}** · "
                            + escape_markdown(f"{dataset.state} · {views.generator_label(dataset.config)}"))
                fraction = progress_fraction(dataset.progress.get("done"), dataset.progress.get("total"))
                st.progress(fraction, text=escape_markdown(dataset.progress.get("message") or "starting"))
                st.caption(f"{dataset.pending} pairs so far, {dataset.dropped} dropped")
                if st.button("Cancel", key=f"sft_cancel_{dataset.name}"):
                    act(lambda: cancel_generation(connection, dataset.name),
                        f"{dataset.name} is being cancelled; the pairs it made stay, pending review.")
    finally:
        connection.close()


def datasets_tab(settings, connection, datasets) -> None:
    polling = any(d.state in RUNNING for d in datasets)
    st.fragment(running_panel, run_every=POLL_SECONDS if polling else None)(settings, polling)
    if not datasets:
        st.info("No SFT dataset yet: generate one.")
        return
    st.dataframe(views.datasets_frame(datasets), hide_index=True, width="stretch")
    by_name = {d.name: d for d in datasets}
    chosen = by_name[st.selectbox("Dataset", list(by_name), key="sft_dataset_detail")]
    if chosen.error:
        st.warning(escape_markdown(chosen.error))  # the generator's or the endpoint's error
    if chosen.drops:
        st.markdown(f"**Dropped generations** ({chosen.dropped})")
        st.dataframe(views.drops_frame(chosen), hide_index=True, width="stretch")
    if st.button(f"Delete {chosen.name}", disabled=chosen.state in RUNNING):
        act(lambda: delete_dataset(connection, chosen.name), f"Deleted {chosen.name} and its pairs.")


def review_tab(settings, connection, datasets) -> None:
    if not datasets:
        st.info("No SFT dataset yet: generate one.")
        return
    names = [d.name for d in datasets]
    left, middle, right = st.columns(3)
    name = left.selectbox("Dataset", names, key="sft_review_dataset")
    state = middle.selectbox("Review state", [ALL, *REVIEW_STATES], index=1, key="sft_review_state")
    dataset = next(d for d in datasets if d.name == name)
    style = right.selectbox("Style", [ALL, *dataset.styles], key="sft_review_style")
    shown = list_pairs(connection, name, state=None if state == ALL else state, style=None if style == ALL else style,
                       limit=PAGE_SIZE)
    st.caption(f"{dataset.pending} pending, {dataset.accepted} accepted, {dataset.rejected} rejected"
               + (f"; showing the first {PAGE_SIZE}" if len(shown) == PAGE_SIZE else ""))
    if shown:
        edited = st.data_editor(
            views.pairs_frame(shown), key=f"sft_review_{name}_{state}_{style}", hide_index=True, width="stretch",
            disabled=["id", "style", "question", "sources", "generator", "edited"],
            column_config={"decision": st.column_config.SelectboxColumn("Decision", options=REVIEW_STATES, required=True),
                           "output": st.column_config.TextColumn("Output", width="large")})
        save, accept_shown = st.columns(2)
        if save.button("Save review", type="primary"):
            try:
                change = views.apply_review(connection, name, shown, edited.to_dict("records"))
            except (SftDataError, AccessDenied) as error:
                refused(error)
            else:
                for problem in change.problems:
                    st.error(escape_markdown(problem))
                if not change.problems:
                    changed(f"{name}: {change.summary}.")
        if accept_shown.button(f"Accept all {len(shown)} shown"):
            act(lambda: review_pairs(connection, name, [pair.id for pair in shown], "accepted"),
                lambda count: f"{name}: {count} pairs accepted.")
    else:
        st.info("No pair matches.")
    st.markdown("**Export**")
    if st.button("Export accepted pairs as JSONL", disabled=not dataset.accepted):
        try:
            export = export_dataset(settings, connection, name, exports_dir(settings))
        except (SftDataError, AccessDenied) as error:
            refused(error)
        else:
            st.session_state["sft_export"] = export
    export = st.session_state.get("sft_export")
    if export is not None and export.name == name and export.path.is_file():
        st.success(escape_markdown(f"{export.pair_count} pairs, dataset {export.dataset_hash}: {export.path}"))
        st.download_button(f"Download {export.path.name}", export.path.read_bytes(), file_name=export.path.name,
                           mime="application/jsonl")


def chunks_tab(connection) -> None:
    options = views.source_options(connection)
    if not options:
        st.info("The knowledge base is empty: ingest documents on the Knowledge page first.")
        return
    group = st.selectbox("Source", list(options), format_func=options.get, key="sft_chunk_source")
    ids = source_groups(connection)[group]
    for chunk in KnowledgeBase(connection, embedder=None).chunks(chunk_ids=ids[:50], limit=50):
        with st.container(border=True):
            st.caption(escape_markdown(f"chunk {chunk.id} · {chunk.source_id} · {chunk.token_count} tokens"))
            st.text(chunk.text)


settings = start_admin_page(
    "pages/sft_data.py",
    "Instruction/output pairs from the knowledge base (the same chunks CPT learns from), in several styles and in "
    "the product's own recommendation task, reviewed here before an SFT run trains on them.")

connection = database.connect(settings.knowledge_db)
try:
    datasets = refreshed_datasets(connection)
    datasets_view, generate_view, review_view, chunks_view = st.tabs(["Datasets", "Generate", "Review", "Chunks"])
    with datasets_view:
        datasets_tab(settings, connection, datasets)
    with generate_view:
        generate_tab(settings, connection)
    with review_view:
        review_tab(settings, connection, datasets)
    with chunks_view:
        chunks_tab(connection)
finally:
    connection.close()
