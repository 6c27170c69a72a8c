"""Writes custom-pixel.js, the snippet a merchant pastes under Settings > Customer events > Add
custom pixel, from src/collector.js (the app pixel's code): one source for both pixels.

    python extensions/web-pixel/snippet.py          # or: make pixel-snippet
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
COLLECTOR_URL = "https://YOUR-CARTBRIDGE-HOST/pixel"
HEADER = f"""\
// cartbridge custom pixel: paste into Shopify admin > Settings > Customer events > Add
// custom pixel, put your bridge's address in place of
// {COLLECTOR_URL} (last line), then Save and Connect.
// Generated from extensions/web-pixel/src/collector.js by snippet.py: edit that file instead.
"""


def snippet() -> str:
    code = (HERE / "src" / "collector.js").read_text(encoding="utf-8")
    plain = "\n".join(line.removeprefix("export ") for line in code.splitlines())
    call = f'cartbridgeCollect({{ analytics, browser, init }}, "{COLLECTOR_URL}");\n'
    return HEADER + "\n" + plain.rstrip("\n") + "\n\n" + call


if __name__ == "__main__":
    (HERE / "custom-pixel.js").write_text(snippet(), encoding="utf-8")
