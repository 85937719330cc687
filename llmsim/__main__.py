"""`python -m llmsim`: the same command as `llmrec llm-server`."""

import typer

from llmsim.cli import serve_command

if __name__ == "__main__":
    typer.run(serve_command)
