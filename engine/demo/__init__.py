"""The embedded demo workspace: its registry of really trained scikit-learn models and its corpus."""
