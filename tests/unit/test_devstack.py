"""Where the other `bridge` commands find `bridge dev`'s stack, and how they name a Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bridge.cli import devstack


def test_a_running_dev_stack_is_used_from_a_directory_below_it(tmp_path: Path) -> None:
    devstack.write(tmp_path, {"REDIS_URL": "redis://127.0.0.1:4321/0", "PORT": "8123"}, os.getpid())
    below = tmp_path / "a" / "b"
    below.mkdir(parents=True)
    env: dict[str, str] = {}
    devstack.use(env, below)
    assert env == {"REDIS_URL": "redis://127.0.0.1:4321/0", "PORT": "8123"}
    assert "dev.env" in devstack.describe_redis(env["REDIS_URL"])
    # The folder ignores itself in git.
    assert (tmp_path / ".cartbridge" / ".gitignore").read_text() == "*\n"


def test_redis_url_set_wins_over_the_file(tmp_path: Path) -> None:
    devstack.write(tmp_path, {"REDIS_URL": "redis://127.0.0.1:4321/0"}, os.getpid())
    env = {"REDIS_URL": "redis://elsewhere:6379/0"}
    devstack.use(env, tmp_path)
    assert env == {"REDIS_URL": "redis://elsewhere:6379/0"}


def test_the_file_of_a_dev_stack_that_stopped_is_not_used(tmp_path: Path) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    devstack.write(tmp_path, {"REDIS_URL": "redis://127.0.0.1:4321/0"}, int(gone.stdout))
    env: dict[str, str] = {}
    devstack.use(env, tmp_path)
    assert env == {}
    assert "has stopped" in devstack.describe_redis(devstack.DEFAULT_REDIS_URL)


def test_only_the_dev_that_wrote_the_file_removes_it(tmp_path: Path) -> None:
    devstack.write(tmp_path, {"REDIS_URL": "redis://127.0.0.1:1/0"}, 111)
    devstack.remove(tmp_path, 222)
    assert devstack.path_in(tmp_path).is_file()
    devstack.remove(tmp_path, 111)
    assert not (tmp_path / ".cartbridge").exists()


def test_a_printed_redis_url_hides_its_password() -> None:
    shown = devstack.redacted("rediss://user:s3cret@redis.example.com:6380/0")
    assert shown == "rediss://user:***@redis.example.com:6380/0"
    assert devstack.redacted("redis://localhost:6379/0") == "redis://localhost:6379/0"
