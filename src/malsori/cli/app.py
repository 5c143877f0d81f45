"""Entry point of the ``malsori`` command. Each command group lives in its own module."""

from __future__ import annotations

import typer

from . import keys, serve, stream, transcribe, worker

app = typer.Typer(
    name="malsori",
    help="Self-hosted speech-to-text on Whisper.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for module in (transcribe, serve, stream, worker, keys):
    module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
