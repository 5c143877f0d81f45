"""``malsori serve``: run the HTTP and WebSocket service on uvicorn.

Settings come from the environment (``MALSORI__SECTION__FIELD``) with the common ones overridable by
flags; with neither, it serves the bundled ``base`` model on the CPU at 127.0.0.1:8000.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["register", "serve", "build_settings"]


def build_settings(
    host: str | None = None,
    port: int | None = None,
    model: str | None = None,
    device: str | None = None,
    compute_type: str | None = None,
    data_dir: Path | None = None,
) -> Settings:
    """Settings from the environment, then the flags that were given on top."""
    from ..config import Settings

    settings = Settings()
    server = {k: v for k, v in {"host": host, "port": port, "data_dir": data_dir}.items() if v is not None}
    engine = {k: v for k, v in {"model": model, "device": device, "compute_type": compute_type}.items() if v is not None}
    return settings.model_copy(
        update={
            "server": settings.server.model_copy(update=server),
            "engine": settings.engine.model_copy(update=engine),
        }
    )


def serve(
    host: str | None = typer.Option(None, help="Address to listen on (default 127.0.0.1)"),
    port: int | None = typer.Option(None, help="Port to listen on (default 8000)"),
    model: str | None = typer.Option(None, help="base, tiny.en, a faster-whisper model name or a model directory (default base)"),
    device: str | None = typer.Option(None, help="auto, cpu or cuda (default auto)"),
    compute_type: str | None = typer.Option(None, "--compute-type", help="auto, int8, float16, ... (default auto)"),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Where the database and job files live (default ./data)"),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error"),
) -> None:
    """Serve the HTTP API, the live WebSocket endpoints and the web page."""
    try:
        import uvicorn

        from .. import logs
        from ..memory import fix_mmap_threshold, limit_arenas
        from ..server.app import create_app
        from ..server.drain import DrainingServer
    except ImportError as exc:
        typer.echo(f"malsori serve needs the server extra: pip install 'malsori[server]' ({exc.name} is missing)", err=True)
        raise typer.Exit(2) from None

    settings = build_settings(host, port, model, device, compute_type, data_dir)
    logs.configure(log_level, settings.server.log_format)
    settings.server.data_dir.mkdir(parents=True, exist_ok=True)
    problem = _exposure_problem(settings)
    if problem is not None:
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)
    limit_arenas(settings.server.malloc_arenas)  # before uvicorn and the model start their threads
    fix_mmap_threshold(settings.server.malloc_mmap_threshold_kb * 1024)
    app = create_app(settings)
    # log_config=None: uvicorn's lines go through malsori.logs (request ids, masked query strings).
    config = uvicorn.Config(
        app, host=settings.server.host, port=settings.server.port, log_level=log_level.lower(), log_config=None
    )
    DrainingServer(config, app.state.services).run()


def _exposure_problem(settings: Settings) -> str | None:
    """Refuse an address other than loopback with no API key (docs/security.md), before uvicorn starts;
    the app checks again at startup, for servers started without this command."""
    from ..tenants import exposure_problem, is_loopback

    if is_loopback(settings.server.host) or settings.auth.allow_open:
        return None
    from ..storage import open_engine
    from ..tenants import KeyStore

    engine = open_engine(settings.database_url())
    try:
        return exposure_problem(settings, KeyStore(engine).any_keys())
    finally:
        engine.dispose()


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
