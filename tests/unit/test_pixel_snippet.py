"""The custom pixel merchants paste is generated from the app pixel's code: it must be current."""

from __future__ import annotations

import importlib.util

from tests.conftest import ROOT

EXTENSION = ROOT / "extensions" / "web-pixel"


def test_custom_pixel_js_is_regenerated_from_collector_js() -> None:
    spec = importlib.util.spec_from_file_location("snippet", EXTENSION / "snippet.py")
    assert spec is not None and spec.loader is not None
    snippet = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(snippet)
    assert (EXTENSION / "custom-pixel.js").read_text(encoding="utf-8") == snippet.snippet(), (
        "run `make pixel-snippet`"
    )
    # The budget is measured in UTF-8 bytes, not UTF-16 string length.
    assert "cartbridgeBytes(body) > limits.bodyBytes" in snippet.snippet()
