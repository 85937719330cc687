"""A local OpenAI-compatible HTTP server for offline runs and tests.

This server is not a language model: it answers the project's prompts with transparent heuristics and embeds text
with a small local sentence-embedding model. Run it with `python -m recsys.llm.server`, or call `serve()` /
`main(argv)`; `create_app()` gives the ASGI app for in-process use.
"""

from recsys.llm.server.app import MODEL_ID, create_app, serve
from recsys.llm.server.faults import FaultConfig

__all__ = ["MODEL_ID", "FaultConfig", "create_app", "main", "serve"]


def main(argv: list[str] | None = None) -> int:
    """The command line (`python -m recsys.llm.server --help`); returns the exit status."""
    from recsys.llm.server.__main__ import main as _main

    return _main(argv)
