"""What the pages show, as plain functions and dataframes, and the Streamlit session glue (login, deep links).

Importing the package installs how the Streamlit server's callers are identified (ui.login), so that no page, run
through the entry point or alone, can act as the operator.
"""

from ui import login  # noqa: F401
