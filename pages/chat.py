"""Chat: ask which model to deploy; the rules' decision shows at once, then the LLM's verified explanation streams below."""

from uuid import uuid4

import streamlit as st

from engine.access.roles import current_user_is_admin
from engine.answering.citations import render_answer_markdown, resolve_citations, sources_list
from engine.answering.explanation import explanation_note
from engine.answering.pipeline import QuestionError, explanation_run, finish_answer, prepare_answer, record_answer
from engine.answering.prompting import MAX_QUESTION_CHARS
from engine.answering.records import feedback_for, load_answer, save_feedback
from engine.core.markdown import escape_markdown
from engine.knowledge.workspace import open_knowledge_base
from engine.llm.backends import llm_backend
from ui.chat_views import answer_caption, candidates_frame, criteria_frame, rendered_sentences
from ui.deep_links import through_entry_point

through_entry_point("pages/chat.py")
settings = st.session_state["settings"]
history: list[int] = st.session_state.setdefault("chat_answers", [])
client = st.session_state.setdefault("chat_client", uuid4().hex)  # this session's key for the questions-per-minute limit

st.title("Which model should I deploy?")
st.caption("Answers come from live MLflow metrics and the team's knowledge base; every claim links to its source.")
if current_user_is_admin():
    st.page_link("pages/knowledge.py", label="Manage the knowledge base", icon=":material/library_books:")

kb = open_knowledge_base(settings)


def show_feedback(answer_id: int) -> None:
    saved, key = feedback_for(kb.connection, answer_id), f"thumb-{answer_id}"
    if key not in st.session_state and saved is not None:
        st.session_state[key] = saved.rating  # a thumb given before a reload shows as given
    rating = st.feedback("thumbs", key=key)
    if rating is not None and (saved is None or saved.rating != rating):
        save_feedback(kb.connection, answer_id, rating)
        saved = feedback_for(kb.connection, answer_id)
    if rating == 0:
        with st.form(key=f"flag-{answer_id}"):
            wrong = st.text_area("What was wrong?", value=(saved.what_was_wrong or "") if saved else "", max_chars=10_000)
            right = st.text_area("The right answer (optional)", value=(saved.correct_answer or "") if saved else "", max_chars=10_000)
            if st.form_submit_button("Send"):
                try:
                    save_feedback(kb.connection, answer_id, 0, wrong, right)
                    st.success("Thanks: an admin will review this answer.")
                except ValueError as error:
                    st.error(str(error))


def show_answer(record, run=None) -> None:
    """The stored answer: the decision, its explanation (streamed from `run` while the LLM writes it), the evidence."""
    with st.chat_message("user"):
        st.text(record.question)
    with st.chat_message("assistant"):
        citations = resolve_citations(kb.connection, record.answer + "\n\n" + record.explanation, log=False)
        st.markdown(render_answer_markdown(record.answer, citations))
        explained = st.container()
        for notice in record.notices:
            st.caption(f":material/info: {escape_markdown(notice)}")
        if citations:
            st.markdown("**Sources**")
            st.markdown(sources_list(citations))
            cited = {source["source_id"]: source["chunks"] for source in record.sources}
            with st.expander("Cited knowledge"):
                for source_id, chunks in cited.items():
                    for chunk in chunks:
                        st.caption(escape_markdown(f"{source_id} · {chunk['title']}"))
                        st.text(chunk["text"])
        if record.candidates:
            with st.expander("Candidates and criteria check"):
                st.dataframe(candidates_frame(record), hide_index=True, width="stretch")
                st.dataframe(criteria_frame(record), hide_index=True, width="stretch")
        if run is not None:
            with explained:
                st.caption("The LLM explains the decision; each sentence shows once it is checked against the metrics.")
                st.write_stream(rendered_sentences(kb.connection, record.answer, run))
            return
        with explained:
            if record.explanation:
                st.markdown(render_answer_markdown(record.explanation, citations))
            note = explanation_note(record.explanation_state, record.verification.get("problems"))
            if note:
                st.caption(f":material/info: {escape_markdown(note)}")
            if record.explanation_draft and record.explanation_state != "kept" and current_user_is_admin():
                with st.expander("What the LLM wrote (admins)"):
                    st.text(record.explanation_draft)
        st.caption(answer_caption(record))
        show_feedback(record.id)


try:
    for answer_id in list(history):
        try:
            record = load_answer(kb.connection, answer_id)
        except KeyError:  # an old unanswered question, deleted past DEPLOYWISE_MAX_UNANSWERED
            history.remove(answer_id)
            continue
        show_answer(record)
    question = st.chat_input("Which model should I deploy for tumour screening?", max_chars=MAX_QUESTION_CHARS)
    if question is not None:
        try:
            with st.status("Reading the registry and the knowledge base...") as status:
                prepared = prepare_answer(settings, kb, question, client=client)
                use_case = escape_markdown(prepared.match.use_case or "not recognised")
                status.update(label=f"Use case: {use_case}", state="complete", expanded=False)
        except QuestionError as error:
            st.warning(escape_markdown(f"Nothing to answer: {error}."))
            st.stop()
        backend = llm_backend(settings)  # loads nothing yet: a failure shows as the explanation's one line
        answer_id = record_answer(kb, prepared, backend.version)
        history.append(answer_id)
        run = explanation_run(kb, prepared, backend, settings.llm_max_new_tokens)
        show_answer(load_answer(kb.connection, answer_id), run)
        finish_answer(kb, prepared, answer_id, backend, run)
        st.rerun()
finally:
    kb.connection.close()
