"""Source: what a citation points to — the cited knowledge, a model's metrics, and the original when linked."""

import streamlit as st

from engine.core.markdown import escape_markdown
from engine.knowledge.sources import SourceError
from engine.knowledge.workspace import open_knowledge_base
from engine.registry.candidate_cache import CandidatesUnavailable, fetch_candidates
from ui.deep_links import through_entry_point
from ui.source_view import parse_source_id, source_view

through_entry_point("pages/source.py")
settings = st.session_state["settings"]

try:
    source_id = parse_source_id(st.query_params.get("id"))
except SourceError as error:
    st.title("Source")
    st.error(f"This link does not name a source: {escape_markdown(error)}.")
    st.stop()

candidates, unavailable = (), None
if source_id.startswith("registry:"):
    try:
        candidates = fetch_candidates(settings).candidates
    except CandidatesUnavailable as error:
        unavailable = str(error)

kb = open_knowledge_base(settings)
try:
    view = source_view(kb, source_id, candidates)
finally:
    kb.connection.close()

if view.refused:
    st.title("Source")
    st.info("This source is not public, or deploywise does not know it. Internal documents and imported table rows are "
            "for logged-in users (for the administrator when no login provider is configured).", icon=":material/lock:")
    st.stop()
st.title(escape_markdown(view.entry.display_name if view.entry else source_id))
st.caption(escape_markdown(f"Source id {source_id} · " + (view.entry.kind if view.entry else "not in the source registry")))
if view.entry and view.entry.url:
    st.link_button("Open the original", view.entry.url, icon=":material/open_in_new:")
if view.candidate:
    candidate = view.candidate
    champion = " (champion)" if candidate.alias == "champion" else ""
    st.subheader(escape_markdown(f"{candidate.name}, version {candidate.version}{champion}"))
    parts = (candidate.use_case, candidate.task, candidate.family, f"run {candidate.run_id}")
    st.caption(escape_markdown(" · ".join(part for part in parts if part)))
    if candidate.description:
        st.text(candidate.description)
    st.dataframe(view.metric_rows(), hide_index=True, width="stretch")
elif unavailable:
    st.warning(f"The model registry cannot be read now: {escape_markdown(unavailable)}")
for number, chunk in enumerate(view.chunks, start=1):
    st.caption(escape_markdown(f"{chunk.document_title} · {chunk.source_id} · part {number} of {len(view.chunks)}"))
    st.text(chunk.text)
if not view.found:
    st.warning("deploywise knows nothing about this source: it is neither in the registry nor in the knowledge base.")
