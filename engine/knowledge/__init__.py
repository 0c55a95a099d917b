"""The team's knowledge base: documents and table rows in, chunks, sources and hybrid search out."""
