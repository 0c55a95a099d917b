"""Deep links: a page opened by URL before the entry point ran goes through the entry point first.

When a session starts on `/knowledge` or `/source?id=...`, Streamlit's pages/ fallback runs that page file
directly, without streamlit_app.py's settings, role check and navigation. The page hands the request, query
parameters included, to the entry point, which builds the navigation for this user and switches back only
to a page the user may see.
"""

from __future__ import annotations

import streamlit as st

REQUEST_KEY = "requested_page"


def through_entry_point(page: str) -> None:
    """Call first in a page: returns at once when the entry point ran, else hands the request to it."""
    if "settings" in st.session_state:
        return
    st.session_state[REQUEST_KEY] = (page, st.query_params.to_dict())
    st.switch_page("streamlit_app.py")


def resume_requested_page(allowed: set[str]) -> tuple[str, dict] | None:
    """Call in the entry point after st.navigation: shows the page a deep link asked for, if allowed; returns a
    request it refused (the page and its query parameters), None when there was none."""
    requested = st.session_state.pop(REQUEST_KEY, None)
    if requested and requested[0] in allowed:
        st.switch_page(requested[0], query_params=requested[1] or None)
    return requested
