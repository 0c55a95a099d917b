"""LLM versions over their life: the catalog, promotion, rollback and archiving."""
