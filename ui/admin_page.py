"""The admin pages: which they are (the navigation's Admin section) and how every one of them starts."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from engine.access.roles import current_identity, current_user_is_admin
from engine.core.markdown import escape_markdown
from engine.core.settings import Settings
from ui.deep_links import through_entry_point


@dataclass(frozen=True)
class AdminPage:
    path: str
    title: str
    icon: str


FLASH_KEY = "admin_flash"  # the message of the last stored change, shown once when the page reruns

ADMIN_PAGES: tuple[AdminPage, ...] = (  # the navigation's Admin section, in this order; add new admin pages here
    AdminPage("pages/knowledge.py", "Knowledge", ":material/library_books:"),
    AdminPage("pages/retraining.py", "Retraining", ":material/model_training:"),
    AdminPage("pages/evaluation.py", "Evaluation", ":material/analytics:"),
    AdminPage("pages/versions.py", "LLM versions", ":material/deployed_code:"),
    AdminPage("pages/feedback.py", "Feedback review", ":material/rate_review:"),
    AdminPage("pages/sft_data.py", "SFT data", ":material/dataset:"),
)


def _refuse_non_admins(title: str) -> None:
    """Others than administrators see a refusal and nothing else of the page."""
    if current_user_is_admin():
        return
    st.error(f"The {title} page is for administrators.", icon=":material/lock:")
    if not current_identity().logged_in:
        st.caption("Administrators log in with **Log in** in the sidebar.")
    st.stop()


def start_admin_page(path: str, caption: str | None = None) -> Settings:
    """The top of every admin page: entered through the app, refused to non-admins, its title, the last change's message."""
    through_entry_point(path)
    title = next(page.title for page in ADMIN_PAGES if page.path == path)
    _refuse_non_admins(title)
    st.title(title)
    if caption:
        st.caption(caption)
    if message := st.session_state.pop(FLASH_KEY, None):
        st.success(escape_markdown(message))  # messages name documents, versions, datasets
    return st.session_state["settings"]


def flash(message: str) -> None:
    """Keep a message for the next run of the page, which shows it at the top."""
    st.session_state[FLASH_KEY] = message


def changed(message: str) -> None:
    """After a stored change: rerun so every table and count shows it, with the message at the top."""
    flash(message)
    st.rerun()
