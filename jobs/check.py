from __future__ import annotations

from bridge.monitor import periodic
from bridge.runtime import runtime


def check() -> None:
    """Periodic: volume-drop check over every shop, alerting once; reschedules itself."""
    periodic(runtime())
