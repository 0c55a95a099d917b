"""One chat answer: the pipeline, the composed answer, the LLM's explanation, verification, citations and records."""
