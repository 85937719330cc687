"""A simulated LLM endpoint: a local OpenAI-compatible HTTP server for rehearsals and tests.

It is not a language model: it answers the project's prompts with transparent heuristics (`llmsim.heuristics`),
embeds text with a small local sentence-embedding model, and injects faults on demand (`llmsim.faults`). Run it
with `llmrec llm-server` or `python -m llmsim` (`llmsim.cli`); `llmsim.launch.start_llm_server()` starts it as a
subprocess; `llmsim.app.create_app()` gives the ASGI app for in-process use.
"""

MODEL_ID = "llmrec-heuristic"  # the model the server answers as
