"""The LLM at run time: its versions, the bundled weights, and the backends that serve it (transformers, llama.cpp, an endpoint)."""
