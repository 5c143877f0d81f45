"""``malsori worker``: a scale-out decoding worker (Celery over Redis; docs/scaling.md).

Settings come from the environment like ``malsori serve``: ``MALSORI__QUEUE__BROKER_URL`` (required),
the model (``MALSORI__ENGINE__MODEL``), the shared database (``MALSORI__STORAGE__URL``) and data
directory (``MALSORI__SERVER__DATA_DIR``) that hold the jobs and their uploads.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

__all__ = ["register", "worker"]


def worker(
    queues: str = typer.Option(
        "stt.cpu", "--queues", "-Q", help="Comma-separated queues to consume, e.g. stt.cpu,stt.gpu,analyze"
    ),
    name: str | None = typer.Option(None, "--name", help="Name in the registry and in job records (default host-pid)"),
    model: str | None = typer.Option(None, help="Model to load (default: MALSORI__ENGINE__MODEL, else base)"),
    device: str | None = typer.Option(None, help="auto, cpu or cuda"),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="The shared data directory (job uploads, SQLite)"),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error"),
) -> None:
    """Decode file jobs and requests that gateways send over Celery."""
    try:
        from ..scale import require_queue_extra

        require_queue_extra()
        from ..scale.worker import run_worker
        from .serve import build_settings
    except (ImportError, RuntimeError) as exc:
        typer.echo(f"malsori worker needs the server and queue extras: pip install 'malsori[server,queue]' ({exc})", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = build_settings(model=model, device=device, data_dir=data_dir)
    if not settings.queue.broker_url:
        typer.echo("malsori worker needs a broker: set MALSORI__QUEUE__BROKER_URL=redis://host:6379/0", err=True)
        raise typer.Exit(2)
    names = [q.strip() for q in queues.split(",") if q.strip()]
    if not names:
        typer.echo("--queues names no queue", err=True)
        raise typer.Exit(2)
    from ..memory import fix_mmap_threshold, limit_arenas

    limit_arenas(settings.server.malloc_arenas)  # a worker decodes like the server: the same allocator settings
    fix_mmap_threshold(settings.server.malloc_mmap_threshold_kb * 1024)
    run_worker(settings, names, name=name, log_level=log_level)


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)
