"""A bad setting stops the Procfile's processes with one line naming the variable, never a
traceback."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from bridge.config.settings import Settings
from tests.conftest import ROOT, free_port, service_env


def procfile_command(name: str) -> list[str]:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return shlex.split(line.split(":", 1)[1])
    raise AssertionError(f"no {name} in Procfile")


@pytest.mark.parametrize("name", ["web", "worker"])
@pytest.mark.parametrize(
    "redis_url", ["localhost:6379", "redis://localhost:port/0", "redis://localhost:99999/0"]
)
def test_a_malformed_redis_url_is_one_line_naming_it(
    settings: Settings, name: str, redis_url: str
) -> None:
    env = service_env(settings, PORT=str(free_port()), REDIS_URL=redis_url)
    proc = subprocess.run(
        procfile_command(name), env=env, cwd=ROOT, capture_output=True, timeout=60
    )
    assert proc.returncode != 0
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "REDIS_URL" in lines[0] and "configuration error" in lines[0]


@pytest.mark.parametrize(("name", "value"), [("PORT", "eighty"), ("GUNICORN_THREADS", "0")])
def test_a_bad_number_for_the_web_is_one_line_naming_it(
    settings: Settings, name: str, value: str
) -> None:
    env = {**service_env(settings, PORT=str(free_port())), name: value}
    proc = subprocess.run(
        procfile_command("web"), env=env, cwd=ROOT, capture_output=True, timeout=60
    )
    assert proc.returncode != 0
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert name in lines[0] and "configuration error" in lines[0]
