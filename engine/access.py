"""Who may do what. Chat is for everyone; admin pages and admin actions are for admins.

Until login arrives (the access-control issue: OIDC through st.login, or a local admin account), every
session is an admin; this is the one place that decision is made, so pages and actions ask it here.
"""


def current_user_is_admin() -> bool:
    return True
