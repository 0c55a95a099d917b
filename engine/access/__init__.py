"""Who may do what: identities, roles, OIDC claims and the local administrator account."""
