"""Start-up refusals of the Procfile's processes: one line naming the setting."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from bridge.config.settings import Settings
from tests.conftest import ROOT, free_port, service_env

STORES = """
[stores."brand-a.myshopify.com"]
webhook_secret = "a-secret"
pipelines_write_key = "key-a"
"""


def procfile_command(name: str) -> list[str]:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return shlex.split(line.split(":", 1)[1])
    raise AssertionError(f"no {name} in Procfile")


def run(name: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        procfile_command(name), env=env, cwd=ROOT, capture_output=True, timeout=60
    )


@pytest.fixture
def stores_env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    """A stores file and neither SHOPIFY_WEBHOOK_SECRET nor IDENTITY_HASH_KEY."""
    path = tmp_path / "stores.toml"
    path.write_text(STORES)
    env = service_env(settings, PORT=str(free_port()), BRIDGE_STORES_FILE=str(path))
    env["SHOPIFY_WEBHOOK_SECRET"] = ""
    env.pop("IDENTITY_HASH_KEY", None)
    return env


@pytest.mark.parametrize("name", ["web", "worker"])
def test_a_stores_file_without_any_secret_key_stops_the_process(
    stores_env: dict[str, str], name: str
) -> None:
    proc = run(name, stores_env)
    assert proc.returncode != 0
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "IDENTITY_HASH_KEY" in lines[0]
    assert "a-secret" not in lines[0]


def test_the_worker_starts_once_the_key_is_set(stores_env: dict[str, str]) -> None:
    # `--burst` works the (empty) queue and exits (1: it found nothing to do), past the
    # configuration checks, which exit with 2.
    env = dict(stores_env, IDENTITY_HASH_KEY="a-long-random-key")
    proc = subprocess.run(
        [*procfile_command("worker"), "--burst"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert b"configuration error" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 1), proc.stderr
