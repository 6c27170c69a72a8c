from __future__ import annotations

from bridge.services import current
from bridge.worker.sweep import sweep as run_sweep


def sweep() -> None:
    """Periodic: re-wake shops whose queue has work but whose job was lost."""
    run_sweep(current())
