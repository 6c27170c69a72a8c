"""The `bridge` command as a user meets it: help for everything, a version, exit codes 0/1/2,
and user errors said in one line (with the file and line), never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import pytest
import redis as redis_lib

from bridge import __version__
from bridge.cli.main import cli, sample_topics
from bridge.config.settings import Settings
from bridge.sources.shopify.mapping import MAPPERS
from tests.conftest import ROOT, SHOP, free_port

SHOPIFY_TOPICS = sorted(t for t in MAPPERS if not t.startswith("backfill/"))


def bridge(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "SHOPIFY_"))}
    environ.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args],
        env=environ,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def commands(
    group: click.Group, prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], click.Command]]:
    out: list[tuple[tuple[str, ...], click.Command]] = []
    for name, command in group.commands.items():
        out.append(((*prefix, name), command))
        if isinstance(command, click.Group):
            out += commands(command, (*prefix, name))
    return out


@pytest.mark.parametrize("path", [p for p, _ in commands(cli)], ids=" ".join)
def test_every_command_argument_and_option_has_help_and_shows_its_default(
    path: tuple[str, ...],
) -> None:
    command = dict(commands(cli))[path]
    assert command.help and command.help.strip(), path
    with click.Context(cli, info_name="bridge") as parent:
        ctx = click.Context(command, info_name=" ".join(path), parent=parent, show_default=True)
        text = command.get_help(ctx)
    for param in command.params:
        if isinstance(param, click.Argument):
            # click gives arguments no help of their own: the command's text explains each.
            name = param.make_metavar(ctx).strip("[].")
            assert name in command.help, (path, name)
        elif isinstance(param, click.Option) and param.name != "help":
            assert param.help, (path, param.name)
            if not param.is_flag:  # a flag is off unless given
                record = param.get_help_record(ctx)
                assert record is not None and "default:" in record[1], (path, param.name)
    assert "Usage: bridge" in text


def test_version() -> None:
    proc = bridge("--version")
    assert (proc.returncode, proc.stdout.strip()) == (0, f"cartbridge {__version__}")


@pytest.mark.parametrize(
    "args", [["nope"], ["map"], ["map", "--bad-option", "orders/paid"], ["send-sample", "x/y"]]
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    proc = bridge(*args)
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr


def test_map_a_missing_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    proc = bridge("map", "orders/paid", str(missing))
    assert proc.returncode == 2
    assert str(missing) in one_line(proc)


def test_map_a_file_that_is_not_json_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "order.json"
    bad.write_text('{\n  "id": 1,\n  "email": oops\n}\n')
    proc = bridge("map", "orders/paid", str(bad))
    assert proc.returncode == 2
    assert one_line(proc).startswith(f"cartbridge: {bad}:3:")


def test_map_a_file_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "order.json"
    bad.write_bytes(b'{\n"a": 1,\n"b": "\xff"}\n')
    proc = bridge("map", "orders/paid", str(bad))
    assert proc.returncode == 2
    assert one_line(proc).startswith(f"cartbridge: {bad}:3:")


def test_backfill_a_missing_file_is_one_line(tmp_path: Path) -> None:
    proc = bridge("backfill", "file", str(tmp_path / "orders.jsonl"), SHOPIFY_SHOP=SHOP)
    assert proc.returncode == 2
    assert "orders.jsonl" in one_line(proc)


def test_backfill_a_bad_jsonl_line_names_the_file_and_line(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "orders.jsonl"
    path.write_text('{"id": 1, "email": "a@example.com"}\n\n{"id": 2,\n')
    proc = bridge(
        "backfill", "file", str(path), "--dry-run", SHOPIFY_SHOP=SHOP, REDIS_URL=settings.redis_url
    )
    assert proc.returncode == 2, proc
    assert one_line(proc).startswith(f"cartbridge: {path}:3: not JSON")


def test_a_malformed_redis_url_is_one_line_for_a_cli_command() -> None:
    proc = bridge("dlq", "list", REDIS_URL="localhost:6379")
    assert proc.returncode == 2
    assert "REDIS_URL" in one_line(proc)


def test_every_topic_the_bridge_handles_has_a_sample_that_maps() -> None:
    assert set(SHOPIFY_TOPICS) <= set(sample_topics())
    # One `bridge map` process per topic (~1 s of start-up each), a few at a time.
    with ThreadPoolExecutor(max_workers=4) as pool:
        procs = list(pool.map(lambda topic: bridge("map", topic), SHOPIFY_TOPICS))
    for topic, proc in zip(SHOPIFY_TOPICS, procs, strict=True):
        assert proc.returncode == 0, (topic, proc.stderr)
        assert proc.stdout.startswith("{") or proc.stdout.startswith("no calls: "), topic
        assert "carries nothing the bridge sends" not in proc.stdout, topic


def test_map_says_why_a_payload_gives_no_call() -> None:
    proc = bridge("map", "checkouts/create")
    assert proc.returncode == 0
    assert proc.stdout.strip() == "no calls: checkout has no contact yet: held until one arrives"


@pytest.mark.parametrize("args", [["dlq", "list"], ["check"], ["gdpr", "export"]])
def test_an_unreachable_redis_is_one_line_naming_it(args: list[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    proc = bridge(*args, REDIS_URL=url)
    assert proc.returncode == 2
    assert url in one_line(proc)


def test_dev_on_a_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = bridge("dev", "--port", str(port))
    assert proc.returncode == 2
    assert f"port {port} is in use" in one_line(proc)


def test_an_empty_dead_letter_list_says_what_it_read(
    settings: Settings, redis: redis_lib.Redis
) -> None:
    redis.sadd("cb:shops", SHOP)
    proc = bridge("dlq", "list", REDIS_URL=settings.redis_url)
    assert proc.returncode == 0 and proc.stdout == ""
    line = one_line(proc)
    assert line.startswith("cartbridge: no dead letters (1 shops, ")
    assert settings.redis_url.split("//")[1].split("/")[0] in line
