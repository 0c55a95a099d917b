"""Knowledge (admin): upload documents, import tables, browse and edit chunks, try the search, keep the source registry,
review the rules read from the documents and which use case each document governs.

Layout only: the work happens in engine functions, and what the page shows (rows, captions, the rules' editor) is
worked out in `ui.knowledge_views`. The knowledge base is opened for this run and closed at its end, so no SQLite
connection is shared between sessions. A change is stored, then the page reruns so every tab and the counts show it;
a refused change shows an error and stores nothing.
"""

import streamlit as st

from engine.access.roles import current_identity
from engine.core.markdown import escape_markdown
from engine.knowledge import table_import
from engine.knowledge.documents import SUPPORTED_SUFFIXES
from engine.knowledge.search import hybrid_search
from engine.knowledge.sources import KINDS, Source, SourceError, export_csv, import_csv, list_sources, unknown_sources
from engine.knowledge.workspace import make_chunker, open_knowledge_base
from engine.registry.candidate_cache import CandidatesUnavailable, fetch_candidates
from engine.registry.use_cases import use_case_descriptions
from engine.rules.criteria import (
    COMPARISONS,
    CriteriaError,
    assign_document,
    discard_review,
    metric_directions,
    reviewed_use_cases,
    save_reviewed_rules,
    set_metric_direction,
)
from engine.rules.governance import document_governance, use_case_terms
from engine.rules.rulebook import rulebook
from ui import knowledge_views as views
from ui.admin_page import changed, start_admin_page

PAGE_SIZE = 20



def header(kb) -> None:
    stats = kb.stats()
    for column, (label, value) in zip(st.columns(len(stats)), stats.items(), strict=True):
        column.metric(label.capitalize(), f"{value:,}")


def upload_tab(kb, settings) -> None:
    generation = st.session_state.setdefault("upload_generation", 0)
    files = st.file_uploader(
        "Documents",
        type=[suffix.lstrip(".") for suffix in SUPPORTED_SUFFIXES],
        accept_multiple_files=True,
        key=f"uploads_{generation}",
        max_upload_size=views.upload_limit_mb(settings),
        help=f"PDF, DOCX, TXT, Markdown or HTML, at most {settings.max_upload_mb:g} MB per file. "
        "A file whose content is already stored is left unchanged; a file with the name of a stored one replaces it "
        "(its new version), so two different files with one name cannot be uploaded together.",
    )
    if st.button("Ingest", type="primary", disabled=not files):
        with st.status(f"Ingesting {len(files)} file{'s' if len(files) != 1 else ''}", expanded=True) as status:
            bar = st.progress(0.0)
            outcomes = views.ingest_uploads(
                kb, make_chunker(settings), files, settings.max_upload_bytes, on_progress=views.progress_reporter(bar)
            )
            status.update(label="Ingestion finished", state="complete")
        st.session_state["ingest_results"] = views.file_outcome_rows(outcomes)
        st.session_state["upload_generation"] = generation + 1  # a fresh, empty uploader
        changed(views.ingest_summary(outcomes))
    if results := st.session_state.get("ingest_results"):
        st.dataframe(results, hide_index=True, width="stretch")


def table_import_form(kb, settings, kind: str) -> None:
    """Step 1 detects text columns (plans kept in session state); step 2 imports with the admin's choice."""
    with st.form(f"{kind}_form"):
        if kind == "unity_catalog":
            st.subheader("Unity Catalog")
            location = st.text_input("Catalog and schema", placeholder="main.ml_knowledge")
            warehouse = st.text_input("SQL warehouse id", value=settings.databricks_warehouse_id or "")
        else:
            st.subheader("SQL database")
            location = st.text_input(
                "SQLAlchemy URL", type="password", placeholder="postgresql+psycopg://user:password@host/db",
                help="The URL may hold a password; it is kept only in this browser session.",
            )
            warehouse = ""
        tables = st.text_input("Tables (optional)", help="Comma-separated names; empty means every table.")
        detect = st.form_submit_button("Detect text columns")
    state_key = f"{kind}_plans"
    if detect:
        st.session_state.pop(state_key, None)
        try:
            source = table_import.table_source(kind, location, tables, warehouse)
            plans = table_import.plan_tables(settings, source)
        except table_import.IMPORT_FAILURES as error:
            st.error(f"Cannot read the tables: {escape_markdown(error)}. Nothing was imported.")
        else:
            generation = st.session_state.get(f"{kind}_generation", 0) + 1
            st.session_state[f"{kind}_generation"] = generation
            st.session_state[state_key] = (source, plans, generation)
    if state_key in st.session_state:
        source, plans, generation = st.session_state[state_key]
        choices = {}
        for plan in plans:
            with st.container(border=True):
                st.markdown(f"**{escape_markdown(plan.table)}** · key: {escape_markdown(plan.key_column or 'hash of the row')}")
                st.dataframe(views.detection_rows(plan), hide_index=True, width="stretch")
                choices[plan.table] = st.multiselect(
                    f"Text columns of {escape_markdown(plan.table)}",
                    [column.name for column in plan.columns],
                    default=plan.text_columns,
                    key=f"{kind}_{generation}_{plan.table}",
                )
                with st.expander("Sample rows"):
                    st.dataframe(plan.sample, hide_index=True)
        if st.button("Import", type="primary", key=f"{kind}_import", disabled=not plans):
            try:
                chosen = table_import.choose_text_columns(plans, choices)
                with st.status("Importing rows", expanded=True) as status:
                    bar = st.progress(0.0)
                    outcomes = table_import.run_table_import(
                        settings, kb, make_chunker(settings), source, chosen, on_progress=views.progress_reporter(bar)
                    )
                    status.update(label="Import finished", state="complete")
            except table_import.IMPORT_FAILURES as error:
                st.error(f"The import failed: {escape_markdown(error)}")
            else:
                st.session_state[f"{kind}_outcomes"] = views.table_outcome_rows(outcomes)
                st.session_state.pop(state_key)
                changed(views.table_import_summary(outcomes))
    if outcomes := st.session_state.get(f"{kind}_outcomes"):
        st.dataframe(outcomes, hide_index=True, width="stretch")


def browse_tab(kb, documents: dict) -> None:
    if not documents:
        st.info("The knowledge base is empty: upload documents or import tables first.")
        return
    left, middle, right = st.columns(3)
    document_id = left.selectbox(
        "Document", [None, *documents], key="browse_document",
        format_func=lambda i: "All documents" if i is None else views.document_label(documents[i]),
    )
    domain = middle.selectbox(
        "Source domain", [None, *kb.source_domains()], key="browse_domain",
        format_func=lambda d: "All domains" if d is None else d,
    )
    contains = right.text_input("Text contains", key="browse_contains")
    page = st.number_input("Page", min_value=1, step=1, key="browse_page")
    chunks, more = views.chunk_page(
        kb, document_id=document_id, source_domain=domain, contains=contains, page=page, page_size=PAGE_SIZE
    )
    if not chunks:
        st.info("No chunks match these filters on this page.")
    else:
        st.dataframe(views.chunk_rows(chunks), hide_index=True, width="stretch")
        st.caption(views.chunk_range_caption(page, PAGE_SIZE, len(chunks), more))
        by_id = {chunk.id: chunk for chunk in chunks}
        chunk = by_id[st.selectbox("Chunk to edit", list(by_id), format_func=lambda i: views.chunk_label(by_id[i]))]
        text = st.text_area("Chunk text", chunk.text, height=220, key=f"chunk_text_{chunk.id}")
        st.caption(escape_markdown(f"Source {chunk.source_id} · {chunk.token_count} tokens" + (" · edited" if chunk.edited else "")))
        save, delete = st.columns(2)
        if save.button("Save chunk", type="primary"):
            try:
                kb.edit_chunk(chunk.id, text)
            except (ValueError, KeyError) as error:
                st.error(f"Not saved: {escape_markdown(error)}")
            else:
                changed(f"Chunk #{chunk.id} saved and re-indexed.")
        if delete.button("Delete chunk"):
            kb.delete_chunk(chunk.id)
            changed(f"Chunk #{chunk.id} deleted.")
    if document_id is not None:
        document = documents[document_id]
        with st.container(border=True):
            st.markdown(f"**Delete the document** {escape_markdown(document.title)} ({document.chunk_count} chunks)")
            confirmed = st.checkbox("Yes, delete this document and all its chunks", key=f"confirm_delete_{document_id}")
            if st.button("Delete document", disabled=not confirmed):
                kb.delete_document(document_id)
                st.session_state.pop("browse_document")
                changed(f"Document {document.title} deleted.")


def search_tab(kb, settings, documents: dict) -> None:
    query = st.text_input("Question or keywords", key="search_query")
    k = st.slider("Results", 1, max(50, settings.search_top_k), settings.search_top_k, key="search_k")
    left, right = st.columns(2)
    domains = left.multiselect("Source domains", kb.source_domains(), key="search_domains")
    document_ids = right.multiselect(
        "Documents", list(documents), key="search_documents", format_func=lambda i: views.document_label(documents[i])
    )
    if not query.strip():
        return
    hits = hybrid_search(kb, query, k=k, source_domains=domains or None, document_ids=document_ids or None)
    if not hits:
        st.info("No matching chunks.")
    for rank, hit in enumerate(hits, start=1):
        with st.container(border=True):
            st.markdown(f"**{rank}. {escape_markdown(hit.document_title)}** · {escape_markdown(hit.source_id)}")
            st.caption(views.hit_caption(hit))
            st.text(hit.text)


def sources_tab(kb) -> None:
    previous = list_sources(kb.connection)
    st.subheader("Registry")
    edited = st.data_editor(
        views.registry_table(previous),
        key="sources_editor",
        num_rows="dynamic",
        hide_index=True,
        width="stretch",
        column_config={
            "source_id": st.column_config.TextColumn("Source id", help="domain:entity, e.g. guideline:fraud-v2", required=True),
            "display_name": st.column_config.TextColumn("Display name", required=True),
            "url": st.column_config.TextColumn("URL", help="http(s) link the answer's citation opens"),
            "kind": st.column_config.SelectboxColumn("Kind", options=KINDS, default="document"),
            "internal": st.column_config.CheckboxColumn(
                "Internal", default=False,
                help="Not public: only logged-in users (the administrator, without a login provider) can read it "
                "and everything under its id. Imported table rows are never public."),
        },
    )
    if st.button("Save registry", type="primary"):
        sources, problems = views.registry_rows_to_sources(edited.to_dict("records"))
        if problems:
            st.error("Nothing was saved. Fix these rows:\n\n" + "\n".join(f"- {escape_markdown(problem)}" for problem in problems))
        else:
            change = views.save_registry(kb.connection, previous, sources)
            st.session_state.pop("sources_editor", None)
            changed(f"Registry saved: {change.written} written, {change.deleted} deleted.")

    st.subheader("CSV")
    upload, download = st.columns(2)
    csv_file = upload.file_uploader("Import a registry CSV", type="csv", key="sources_csv")
    if upload.button("Import CSV", disabled=csv_file is None):
        try:
            written = import_csv(kb.connection, csv_file.getvalue())
        except SourceError as error:
            st.error(f"{escape_markdown(csv_file.name)}: {escape_markdown(error)}. The registry is unchanged.")
        else:
            st.session_state.pop("sources_editor", None)
            changed(f"Imported {written} sources from {csv_file.name}.")
    download.download_button("Export CSV", export_csv(kb.connection), file_name="sources.csv", mime="text/csv")

    st.subheader("Unknown source ids")
    unknown = unknown_sources(kb.connection)
    if not unknown:
        st.caption("No answer has cited an id the registry lacks.")
        return
    st.dataframe(unknown, hide_index=True, width="stretch")
    with st.form("add_unknown"):
        source_id = st.selectbox("Source id", [row["source_id"] for row in unknown])
        display_name = st.text_input("Display name", key="unknown_display_name")
        url = st.text_input("URL")
        kind = st.selectbox("Kind", KINDS)
        if st.form_submit_button("Add to registry"):
            try:
                kb.register_sources([Source(source_id, display_name.strip(), url.strip() or None, kind)])
            except SourceError as error:
                st.error(f"Not added: {escape_markdown(error)}")
            else:
                st.session_state.pop("sources_editor", None)
                changed(f"{source_id} added to the registry.")


def criteria_tab(kb, settings) -> None:
    st.caption("The rules each use case is decided by, read from the documents that govern it: each rule beside the "
               "sentence it came from. Saving a use case makes it reviewed: from then on its documents no longer change "
               "it until you give it back.")
    try:
        snapshot = fetch_candidates(settings)
    except CandidatesUnavailable as error:
        st.error(f"The model registry cannot be read, so the use cases and their metrics are unknown: {escape_markdown(error)}")
        return
    use_cases = sorted(set(snapshot.use_cases()) | set(reviewed_use_cases(kb.connection)))
    if not use_cases:
        st.info("The registry has no candidate models yet (registered models tagged `use_case` and `task`).")
        return
    use_case = st.selectbox("Use case", use_cases)
    candidates = snapshot.for_use_case(use_case)
    rules = rulebook(kb.connection, use_case, candidates, snapshot.candidates)
    st.caption(views.rules_state_caption(rules))
    for conflict in (rules.extracted or rules).conflicts:
        st.warning(views.conflict_warning(conflict))
    for unread in rules.unread:  # a reviewed rule set does not read its documents
        st.warning(views.unread_warning(unread))
    st.dataframe(views.provenance_rows(rules), hide_index=True, width="stretch",
                 column_config={"sentence": st.column_config.TextColumn(width="large")})
    st.caption(views.governed_by_caption(rules))

    edited = st.data_editor(
        views.criteria_table(rules.criteria), num_rows="dynamic", hide_index=True, width="stretch", key=f"criteria_{use_case}",
        column_config={"comparison": st.column_config.SelectboxColumn(options=list(COMPARISONS), required=True),
                       "hard": st.column_config.CheckboxColumn(default=True)},
    )
    current = views.PolicyFields.of(rules.policy)
    directions = list(views.DIRECTIONS)
    left, right = st.columns(2)
    fields = views.PolicyFields(
        left.text_input("Priority metric", value=current.priority, key=f"priority_{use_case}"),
        right.selectbox("Its direction", directions, index=directions.index(current.priority_direction), key=f"pdir_{use_case}"),
        left.text_input("Tie-breaker metric", value=current.tie_breaker, key=f"tie_{use_case}"),
        right.selectbox("Tie-breaker direction", directions, index=directions.index(current.tie_direction), key=f"tdir_{use_case}"),
        left.text_input("Near-best margin", value=current.margin, key=f"margin_{use_case}",
                        help="Candidates this close to the best on the priority metric count as equivalent; empty: none"),
        right.checkbox("Margin is relative (a share of the best value)", value=current.relative, key=f"rel_{use_case}"),
        st.text_input("Family order, simplest first (comma-separated family tags)", value=current.family_order,
                      key=f"families_{use_case}"),
    )
    save, restore = st.columns(2)
    if save.button("Save as reviewed", type="primary"):
        try:
            criteria, policy = views.rules_from_editor(use_case, edited.to_dict("records"), fields, rules.policy)
            save_reviewed_rules(kb.connection, use_case, criteria, policy, current_identity().name or "admin")
        except CriteriaError as error:
            st.error(f"Not saved: {escape_markdown(error)}. The rules are unchanged.")
        else:
            changed(f"Rules of {use_case} saved as reviewed.")
    if restore.button("Give back to the documents", help="Drop the reviewed rules and read them from the documents again",
                      disabled=rules.state != "reviewed"):
        discard_review(kb.connection, use_case)
        st.session_state.pop(f"criteria_{use_case}", None)
        changed(f"Rules of {use_case} read again from its documents.")
    metric_directions_form(kb, candidates)
    governance_form(kb, snapshot)


def metric_directions_form(kb, candidates) -> None:
    """Metrics whose direction neither the catalog, the key's words nor the documents give: the admin says."""
    given = metric_directions(kb.connection)
    unknown = views.undirected_metrics(candidates, given)
    if not unknown and not given:
        return
    st.subheader("Metric directions")
    if unknown:
        st.warning("Nobody says which way is better for: " + escape_markdown(", ".join(unknown)) + ". A rule that ranks on one of them "
                   "cannot decide until you set it.")
    with st.form("metric_direction"):
        metric = st.selectbox("Metric", sorted(set(unknown) | set(given)))
        direction = st.radio("Better is", list(views.BETTER_IS), horizontal=True)
        if st.form_submit_button("Set direction"):
            set_metric_direction(kb.connection, metric, views.BETTER_IS[direction], current_identity().name or "admin")
            changed(f"Direction of {metric} saved.")


def governance_form(kb, snapshot) -> None:
    """Which use case each document governs, and the admin's choice where its text does not say (or says wrongly)."""
    st.subheader("Documents and the use cases they govern")
    documents = kb.documents()
    governance = document_governance(kb.connection, use_case_terms(snapshot.candidates),
                                     descriptions=use_case_descriptions(snapshot.candidates))
    st.dataframe(views.governance_rows(documents, governance), hide_index=True, width="stretch")
    if not documents:
        return
    with st.form("governance"):
        labels = {views.document_label(d): d for d in documents}
        document = labels[st.selectbox("Document", list(labels))]
        choices = [views.FROM_TEXT, views.NONE_CHOICE, *snapshot.use_cases()]
        choice = st.selectbox("Governs", choices)
        if st.form_submit_button("Save assignment"):
            assign_document(kb.connection, document.origin, views.assigned_use_case(choice), current_identity().name or "admin")
            changed(f"{document.title}: {choice}.")


settings = start_admin_page("pages/knowledge.py")
kb = open_knowledge_base(settings)
try:
    header(kb)
    upload, tables, browse, search, registry, rules = st.tabs(
        ["Upload", "Import tables", "Browse & edit", "Search", "Sources", "Criteria"]
    )
    with upload:
        upload_tab(kb, settings)
    with tables:
        table_import_form(kb, settings, "unity_catalog")
        st.divider()
        table_import_form(kb, settings, "sql")
    documents = {document.id: document for document in kb.documents()}
    with browse:
        browse_tab(kb, documents)
    with search:
        search_tab(kb, settings, documents)
    with registry:
        sources_tab(kb)
    with rules:
        criteria_tab(kb, settings)
finally:
    kb.connection.close()
