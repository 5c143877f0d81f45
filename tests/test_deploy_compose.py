"""deploy/compose.yaml in every profile, through Debian's real ``docker-compose`` (1.29: ``config``
validates the file and resolves variables and anchors), then what compose itself cannot know: every
``MALSORI__`` variable names a real setting with a valid value, every command is a real CLI command,
every service a profile starts has what it depends on, and the names nginx and Prometheus use are
served. Images are not built here: this machine has no registry to pull base images from.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from debian import ensure_program

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"

# Profile sets a deployment uses, and the services each must start (docs/deploy.md).
PROFILES = {
    ("single",): {"malsori"},
    ("scaled",): {"gateway", "worker-cpu", "redis", "postgres"},
    ("scaled", "gpu"): {"gateway", "worker-cpu", "worker-gpu", "redis", "postgres"},
    ("single", "nginx", "monitoring"): {"malsori", "nginx", "prometheus", "grafana"},
    ("scaled", "gpu", "nginx", "monitoring"): {"gateway", "worker-cpu", "worker-gpu", "redis", "postgres",
                                               "nginx", "prometheus", "grafana"},
}  # fmt: skip


@pytest.fixture(scope="module")
def docker_compose() -> Path:
    return ensure_program("/usr/bin/docker-compose", "docker-compose")


def resolved(docker_compose: Path, profiles: tuple[str, ...]) -> dict:
    """``docker-compose config`` for ``profiles``: the file as compose reads it, or the test fails."""
    args = [str(docker_compose), "--project-directory", str(DEPLOY), "-f", str(DEPLOY / "compose.yaml")]
    for profile in profiles:
        args += ["--profile", profile]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "MALSORI"))}
    result = subprocess.run([*args, "config"], capture_output=True, text=True, env=env, cwd=DEPLOY)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def active(config: dict, profiles: tuple[str, ...]) -> dict[str, dict]:
    """The services ``docker compose up`` starts with ``profiles`` (a service without profiles always)."""
    return {name: s for name, s in config["services"].items() if not s.get("profiles") or set(s["profiles"]) & set(profiles)}


def _command(service: dict) -> list[str]:
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else list(command)


def _names(service_name: str, service: dict) -> set[str]:
    """The DNS names a service answers to on the default network: its own and its aliases."""
    aliases = ((service.get("networks") or {}).get("default") or {}).get("aliases") or []
    return {service_name, *aliases}


def _bind_mount(volume: str | dict) -> tuple[str, str] | None:
    """(target, source) of a bind mount in either of compose's syntaxes; None for a named volume."""
    if isinstance(volume, dict):
        return (volume["target"], volume["source"]) if volume["type"] == "bind" else None
    source, target = volume.split(":")[:2]
    return (target, source) if source.startswith("/") else None


@pytest.mark.parametrize("profiles", list(PROFILES), ids=[",".join(p) for p in PROFILES])
def test_every_profile_validates_and_starts_what_it_needs(docker_compose, profiles):
    config = resolved(docker_compose, profiles)
    services = active(config, profiles)
    assert set(services) == PROFILES[profiles]
    for name, service in services.items():
        for dependency in service.get("depends_on") or {}:
            assert dependency in services, f"{name} depends on {dependency}, which profiles {profiles} do not start"
        for secret in service.get("secrets") or []:
            assert (secret["source"] if isinstance(secret, dict) else secret) in config["secrets"]


def test_the_default_profile_is_the_single_process():
    env = dict(
        line.split("=", 1) for line in (DEPLOY / ".env").read_text().split("\n") if "=" in line and not line.startswith("#")
    )
    assert env["COMPOSE_PROFILES"] == "single"


def test_every_malsori_variable_is_a_setting_with_a_valid_value(docker_compose):
    from malsori.config import Settings

    config = resolved(docker_compose, ("single", "scaled", "gpu"))
    malsori_services = {n: s for n, s in config["services"].items() if "malsori" in _command(s) or n == "malsori"}
    assert set(malsori_services) == {"malsori", "gateway", "worker-cpu", "worker-gpu"}
    for name, service in malsori_services.items():
        env = {k: v for k, v in (service.get("environment") or {}).items() if k.startswith("MALSORI__")}
        nested: dict[str, dict[str, str]] = {}
        for key, value in env.items():
            _, section, field = key.lower().split("__")
            assert section in Settings.model_fields, f"{name}: {key}: no settings section {section!r}"
            fields = Settings.model_fields[section].annotation.model_fields  # type: ignore[union-attr]
            assert field in fields, f"{name}: {key}: {section} has no field {field!r}"
            nested.setdefault(section, {})[field] = value
        Settings.model_validate(nested)  # the values parse (ports, byte counts, ...)


def test_every_command_is_a_cli_command(docker_compose):
    from typer.main import get_command

    from malsori.cli.app import app

    commands = set(get_command(app).commands)  # type: ignore[attr-defined]
    config = resolved(docker_compose, ("single", "scaled", "gpu"))
    dockerfile_cmds = {"Dockerfile": "serve", "Dockerfile.cuda": "worker"}
    for dockerfile, command in dockerfile_cmds.items():
        assert f'CMD ["malsori", "{command}"' in (DEPLOY / dockerfile).read_text()
    used = set(dockerfile_cmds.values())
    for service in config["services"].values():
        command = _command(service)
        if command[:1] == ["malsori"]:
            used.add(command[1])
    assert used == {"serve", "worker"} and used <= commands, (used, commands)


def test_nginx_and_prometheus_reach_the_services_by_the_names_they_use(docker_compose):
    config = resolved(docker_compose, ("single", "scaled", "gpu", "nginx", "monitoring"))
    services = config["services"]
    nginx_conf = (DEPLOY / "nginx" / "malsori.conf").read_text()
    assert "server malsori:8000" in nginx_conf
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    sd = {job["job_name"]: job["dns_sd_configs"][0] for job in prometheus["scrape_configs"]}
    # The gateways and the single process both answer to `malsori` on port 8000.
    for name in ("malsori", "gateway"):
        assert "malsori" in _names(name, services[name])
        assert services[name]["environment"]["MALSORI__SERVER__PORT"] == "8000"
    assert sd["malsori"]["names"] == ["malsori"] and sd["malsori"]["port"] == 8000
    # The workers serve their metrics where Prometheus looks for them.
    assert sorted(sd["malsori-worker"]["names"]) == ["worker-cpu", "worker-gpu"]
    for name in ("worker-cpu", "worker-gpu"):
        assert services[name]["environment"]["MALSORI__QUEUE__METRICS_PORT"] == str(sd["malsori-worker"]["port"])
    # The mounted files are the shipped ones.
    mounts = dict(_bind_mount(m) for s in services.values() for m in s.get("volumes", []) if _bind_mount(m))
    assert mounts["/etc/nginx/conf.d/default.conf"] == str(DEPLOY / "nginx" / "malsori.conf")
    assert mounts["/etc/prometheus"] == str(DEPLOY / "prometheus")
    assert mounts["/var/lib/grafana/dashboards"] == str(DEPLOY / "grafana" / "dashboards")
    for source in mounts.values():
        assert Path(source).exists(), source
    # The upload limit nginx enforces is the service's plus its 1 MiB of multipart framing.
    limit = int(services["malsori"]["environment"]["MALSORI__LIMITS__MAX_UPLOAD_BYTES"])
    assert f"client_max_body_size {limit // (1 << 20) + 1}m;" in nginx_conf


def test_gateways_have_health_checks_and_a_drain_period(docker_compose):
    config = resolved(docker_compose, ("single", "scaled", "gpu"))
    for name in ("malsori", "gateway"):
        service = config["services"][name]
        assert "/is_ready" in " ".join(service["healthcheck"]["test"])
        assert service["stop_grace_period"] in ("1m", "1m0s", "60s")
    # Workers serve no API on 8000 (the image's own check): theirs is the metrics port.
    for name in ("worker-cpu", "worker-gpu"):
        service = config["services"][name]
        port = service["environment"]["MALSORI__QUEUE__METRICS_PORT"]
        assert f"http://127.0.0.1:{port}/metrics" in service["healthcheck"]["test"]


def test_grafana_is_provisioned_with_the_datasource_the_dashboard_uses(docker_compose):
    """Grafana itself is not run here (no Debian package): its provisioning files must agree with the
    dashboard and with compose (datasource uid, Prometheus's service name and port, dashboard folder)."""
    import json

    config = resolved(docker_compose, ("single", "monitoring"))
    provisioning = DEPLOY / "grafana" / "provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in config["services"]
    assert "--web.listen-address" not in " ".join(config["services"]["prometheus"]["command"])  # the default :9090
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "malsori.yml").read_text())["providers"]
    grafana_mounts = dict(_bind_mount(m) for m in config["services"]["grafana"]["volumes"] if _bind_mount(m))
    assert grafana_mounts[provider["options"]["path"]] == str(DEPLOY / "grafana" / "dashboards")
    assert grafana_mounts["/etc/grafana/provisioning"] == str(provisioning)
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "malsori.json").read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    uids |= {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert uids == {datasource["uid"]}
    assert len({p["title"] for p in dashboard["panels"]}) == len(dashboard["panels"])  # no two panels alike


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_what_the_dockerfiles_run_works_here(dockerfile, tmp_path):
    """Images cannot be built here (no registry for base images), so the parts that can be checked
    are: the files it copies exist, the extras it installs exist, its MALSORI__ variables are
    settings, and its model step (joining the bundled models, no download) runs."""
    import re
    import sys

    from malsori.config import Settings

    text = (DEPLOY / dockerfile).read_text().replace("\\\n", " ")
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for path in source.split():
            assert (REPO / path).exists(), path
    pyproject = (REPO / "pyproject.toml").read_text()
    optional = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = set(re.findall(r"^([a-z]+) = \[", optional, re.M))
    assert {"server", "engine"} <= extras
    (wanted,) = re.findall(r"install --no-cache-dir '\.\[([a-z,]+)\]'", text)
    assert set(wanted.split(",")) <= extras
    for section, field in re.findall(r"MALSORI__([A-Z]+)__([A-Z_]+)=", text):
        assert field.lower() in Settings.model_fields[section.lower()].annotation.model_fields, (section, field)  # type: ignore[union-attr]
    steps = re.findall(r'python -c "(from malsori\.engine\.models import [^"]+)"', text)
    assert steps
    env = {**os.environ, "MALSORI_CACHE_DIR": str(tmp_path / "models")}
    for step in steps:
        result = subprocess.run([sys.executable, "-c", step], capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr
        assert Path(result.stdout.strip()).is_dir(), result.stdout
