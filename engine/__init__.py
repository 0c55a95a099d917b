"""Run-time engine: knowledge base, search, settings, CLI — everything that answers a question, without Streamlit."""
