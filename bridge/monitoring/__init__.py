"""Monitoring: per-event volume counts, the volume-drop check and its alerts."""
