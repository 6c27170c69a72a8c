"""The chaos script's small run: real gunicorn, workers, Redis (AOF) and a faulty stand-in, with
workers SIGKILLed between a POST and its acknowledgement and Redis restarted mid-run."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_small_chaos_run_loses_nothing_and_duplicates_nothing() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "bench/chaos.py",
            "--webhooks",
            "150",
            "--workers",
            "2",
            "--timeout",
            "150",
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=240,
    )
    result = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert result["expected"] > 150 and result["refused_sends"] == 0, result
    assert result["lost"] == 0 and result["duplicate"] == 0, result
    assert result["delivered"] == result["expected"], result
    assert result["kills_between_post_and_ack"] >= 1 and result["redis_restarts"] == 1, result
    assert result["sigterm_exit_s"] < 30, result
    assert proc.returncode == 0, result
