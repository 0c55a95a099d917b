"""The team's rules: read from its documents, reviewed by admins, and the decision they make."""
