"""``malsori keys create|list|revoke``: API keys of tenants, in the service's database.

Works on the same database as ``malsori serve`` (``--data-dir``, or ``MALSORI__STORAGE__URL``), with or
without the server running; a running server sees a new or revoked key within a couple of seconds.
``create`` prints the new key alone on its last line: it is shown this once and kept only hashed.
"""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["register"]

keys_app = typer.Typer(help="Create, list and revoke API keys of tenants.", no_args_is_help=True)


def _store(data_dir: Path | None):
    from ..config import Settings
    from ..storage import open_engine
    from ..tenants import KeyStore

    settings = Settings()
    if data_dir is not None:
        settings = settings.model_copy(update={"server": settings.server.model_copy(update={"data_dir": data_dir})})
    if settings.storage.url is None:
        settings.server.data_dir.mkdir(parents=True, exist_ok=True)
    return KeyStore(open_engine(settings.database_url()))


_DATA_DIR = typer.Option(None, "--data-dir", help="The server's data dir (default ./data, or MALSORI__STORAGE__URL)")


@keys_app.command("create")
def create(
    tenant: str = typer.Option(..., "--tenant", help="The tenant the key acts for"),
    admin: bool = typer.Option(False, "--admin", help="Also the admin scope (key management, panel settings)"),
    scopes: str | None = typer.Option(None, "--scopes", help="Exact scopes instead, e.g. 'read' or 'transcribe,read,admin'"),
    name: str | None = typer.Option(None, "--name", help="A note on what the key is for"),
    expires_in_days: float | None = typer.Option(None, "--expires-in-days", help="Expire after this many days"),
    requests_per_minute: int | None = typer.Option(None, "--requests-per-minute", help="This key's own request limit"),
    data_dir: Path | None = _DATA_DIR,
) -> None:
    """Create a key; its secret is printed alone on the last line, this once."""
    from ..errors import MalsoriError
    from ..tenants import DEFAULT_SCOPES, Scope, parse_scopes

    try:
        chosen = parse_scopes(scopes) if scopes else (DEFAULT_SCOPES | {Scope.ADMIN} if admin else DEFAULT_SCOPES)
        new = _store(data_dir).create(
            tenant, scopes=chosen, name=name, expires_in_days=expires_in_days, requests_per_minute=requests_per_minute
        )
    except MalsoriError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    key = new.key
    typer.echo(f"key {key.id} for tenant {key.tenant_id}, scopes {' '.join(sorted(s.value for s in key.scopes))}")
    if key.expires_at:
        typer.echo(f"expires {key.expires_at.isoformat()}")
    typer.echo("store it now: it is not shown again")
    typer.echo(new.secret)


@keys_app.command("list")
def list_keys(
    tenant: str | None = typer.Option(None, "--tenant", help="Only this tenant's keys"),
    all_keys: bool = typer.Option(False, "--all", help="Revoked keys too"),
    data_dir: Path | None = _DATA_DIR,
) -> None:
    """List keys (ids, tenants, scopes; never secrets)."""
    keys = _store(data_dir).list(tenant, include_revoked=all_keys)
    if not keys:
        typer.echo("no keys")
        return
    for k in keys:
        state = "revoked" if k.revoked_at else ("expired" if not k.active else "active")
        scopes = ",".join(sorted(s.value for s in k.scopes))
        expires = k.expires_at.strftime("%Y-%m-%d") if k.expires_at else "-"
        typer.echo(f"{k.id}  {k.tenant_id}  {scopes}  {state}  expires {expires}  {k.name or ''}".rstrip())


@keys_app.command("revoke")
def revoke(
    key_id: str = typer.Argument(..., help="The key's id (the 12 characters after msk_)"),
    tenant: str | None = typer.Option(None, "--tenant", help="Only if the key is this tenant's"),
    data_dir: Path | None = _DATA_DIR,
) -> None:
    """Revoke a key: it stops working at once here, within seconds on a running server."""
    from ..errors import NotFoundError

    try:
        key = _store(data_dir).revoke(key_id, tenant_id=tenant)
    except NotFoundError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"key {key.id} of tenant {key.tenant_id} revoked")


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
