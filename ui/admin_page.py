"""The admin pages: which they are (the navigation's Admin section) and the refusal every one of them starts with."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from engine.access.roles import current_identity, current_user_is_admin


@dataclass(frozen=True)
class AdminPage:
    path: str
    title: str
    icon: str


ADMIN_PAGES: tuple[AdminPage, ...] = (  # the navigation's Admin section, in this order; add new admin pages here
    AdminPage("pages/knowledge.py", "Knowledge", ":material/library_books:"),
    AdminPage("pages/retraining.py", "Retraining", ":material/model_training:"),
    AdminPage("pages/evaluation.py", "Evaluation", ":material/analytics:"),
    AdminPage("pages/versions.py", "LLM versions", ":material/deployed_code:"),
    AdminPage("pages/feedback.py", "Feedback review", ":material/rate_review:"),
    AdminPage("pages/sft_data.py", "SFT data", ":material/dataset:"),
)


def require_admin_page(title: str) -> None:
    """Call at the top of an admin page (after `through_entry_point`): others see a refusal and nothing else."""
    if current_user_is_admin():
        return
    st.error(f"The {title} page is for administrators.", icon=":material/lock:")
    if not current_identity().logged_in:
        st.caption("Administrators log in with **Log in** in the sidebar.")
    st.stop()
