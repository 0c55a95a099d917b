"""Feedback review (admin): the answers users flagged, the admin's correction, accept or reject.

Each flagged answer shows its question, the answer as the user saw it, the LLM version, what the user said was
wrong and the candidates and criteria check stored with it. A pending one has the correction editor (prefilled
with the user's right answer) and Save draft / Accept / Reject; a decided one shows its correction and Reopen.
An accepted correction joins the next snapshot's training text (training.dataset_snapshot).

Layout only: the work happens in `engine.answering.feedback_review`. The database is opened for this run and closed at its
end. A refused action shows its reason under the answer and changes nothing.
"""

import streamlit as st

from engine.access.roles import AccessDenied
from engine.answering.citations import render_answer_markdown, resolve_citations
from engine.answering.feedback_review import (
    MAX_CORRECTION_CHARS,
    MAX_NOTE_CHARS,
    REVIEW_STATES,
    ReviewError,
    accept,
    correction_problems,
    flagged_versions,
    list_flagged,
    reject,
    reopen,
    review_counts,
    save_correction,
)
from engine.core import database
from engine.core.markdown import escape_markdown
from ui.admin_page import changed, start_admin_page
from ui.chat_views import answer_caption, candidates_frame, criteria_frame

PAGE_SIZE = 50
ALL = "all"


def act(action, item, message: str, **arguments) -> None:
    """Run one review action (it records who did it); on success rerun with a message, else say why under the answer."""
    try:
        action(connection, item.answer.id, **arguments)
    except (ReviewError, KeyError, AccessDenied) as error:
        reason = str(error).strip("'\"")
        st.error(escape_markdown(reason[:1].upper() + reason[1:]))
    else:
        changed(message)


def flagged_card(item) -> None:
    answer = item.answer
    with st.container(border=True):
        asked = answer.asked_at[:16].replace("T", " ")
        st.markdown(f"**Answer #{answer.id}** · {item.state} · version {escape_markdown(answer.llm_version)} · asked {asked} UTC"
                    + (f" · last reviewed by {escape_markdown(item.reviewer)}" if item.reviewer else "")
                    + (f" on {item.reviewed_at[:10]}" if item.reviewed_at else ""))
        if item.withdrawn:
            st.caption(":material/undo: The user has since turned the thumbs-down into a thumbs-up.")
        st.markdown("**Question**")
        st.text(answer.question)
        st.markdown("**Answer**")
        st.markdown(render_answer_markdown(answer.answer, resolve_citations(connection, answer.answer, log=False)))
        st.caption(answer_caption(answer))
        st.markdown("**What was wrong** (user)")
        st.text(item.feedback.what_was_wrong or "(not said)")
        if item.feedback.correct_answer:
            st.markdown("**The right answer** (user)")
            st.text(item.feedback.correct_answer)
        if answer.candidates:
            with st.expander("Candidates and criteria check when it was asked"):
                st.dataframe(candidates_frame(answer), hide_index=True, width="stretch")
                st.dataframe(criteria_frame(answer), hide_index=True, width="stretch")
        if item.state == "pending":
            editor(item)
        else:
            st.markdown(f"**Correction** ({item.state})")
            st.text(item.correction or "(none)")
            if item.note:
                st.caption(f"Note: {escape_markdown(item.note)}")
            if st.button("Reopen", key=f"reopen-{answer.id}"):
                act(reopen, item, f"Answer #{answer.id} is pending again.")


def editor(item) -> None:
    answer_id = item.answer.id
    if problems := correction_problems(connection, item.answer, item.draft):
        st.warning("This correction cannot be accepted yet: " + escape_markdown("; ".join(problems)))
    with st.form(key=f"review-{answer_id}"):
        correction = st.text_area("Correction", value=item.draft, key=f"correction-{answer_id}", height=160,
                                  max_chars=MAX_CORRECTION_CHARS,
                                  help="The right answer as it should be learned; cite sources as <<SRC:domain:id>>. "
                                       "It trains the next LLM version once accepted, with the question and candidates.")
        note = st.text_input("Note (optional)", value=item.note or "", key=f"note-{answer_id}", max_chars=MAX_NOTE_CHARS)
        save_column, accept_column, reject_column = st.columns(3)
        save = save_column.form_submit_button("Save draft", key=f"save-{answer_id}", width="stretch")
        accepted = accept_column.form_submit_button("Accept", key=f"accept-{answer_id}", type="primary", width="stretch")
        rejected = reject_column.form_submit_button("Reject", key=f"reject-{answer_id}", width="stretch")
    if save:
        act(save_correction, item, f"Correction of answer #{answer_id} saved (pending).", correction=correction, note=note)
    elif accepted:
        act(accept, item, f"Correction of answer #{answer_id} accepted: it joins the next snapshot.",
            correction=correction, note=note)
    elif rejected:
        act(reject, item, f"Answer #{answer_id} rejected.", note=note)


settings = start_admin_page(
    "pages/feedback.py",
    "Answers users flagged with a thumbs-down. Write or edit the correction, then accept it (it joins the next "
    "snapshot as training text) or reject it.")

settings.ensure_workspace()
connection = database.connect(settings.knowledge_db)
try:
    versions = flagged_versions(connection)
    state_column, version_column = st.columns(2)
    state = state_column.selectbox("State", [*REVIEW_STATES, ALL], key="review_state")
    version = version_column.selectbox("LLM version", [ALL, *versions], key="review_version")
    chosen_version = None if version == ALL else version
    counts = review_counts(connection, llm_version=chosen_version)
    for column, name in zip(st.columns(len(REVIEW_STATES)), REVIEW_STATES, strict=True):
        column.metric(name.capitalize(), f"{counts[name]:,}")
    items = list_flagged(connection, state=None if state == ALL else state, llm_version=chosen_version, limit=PAGE_SIZE)
    shown = sum(counts.values()) if state == ALL else counts[state]
    if not items:
        st.info("No flagged answer." if state == ALL else f"No {state} flagged answer.")
    elif shown > len(items):
        st.caption(f"The newest {len(items)} of {shown:,}.")
    for item in items:
        flagged_card(item)
finally:
    connection.close()
