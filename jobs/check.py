from __future__ import annotations

from bridge.monitoring.monitor import periodic
from bridge.services import current


def check() -> None:
    """Periodic: volume-drop check over every shop, alerting once; reschedules itself."""
    periodic(current())
