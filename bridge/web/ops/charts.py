"""Charts drawn as inline SVG on the server: nothing is fetched when a page loads, no script runs.

Pure: a `Chart` (ops/overview.py) in, markup out. Every text that goes into the markup is
escaped here (the result is marked safe for Jinja), numbers are formatted by this module.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape

from markupsafe import Markup

from bridge.ops.overview import Chart

WIDTH = 720
HEIGHT = 150
PAD_LEFT = 44
PAD_RIGHT = 8
PAD_TOP = 18
PAD_BOTTOM = 20
_RIGHT = 'font-size="10" text-anchor="end"'
KIND_FILL = {"drop": "#d9534f", "silence": "#f0ad4e", "spike": "#8e44ad"}


def _fmt_time(epoch_s: int, step_s: int) -> str:
    when = datetime.fromtimestamp(epoch_s, UTC)
    return when.strftime("%b %d %H:%M UTC" if step_s < 3600 else "%b %d %H:00 UTC")


def svg(chart: Chart, title: str) -> Markup:
    """The chart as an <svg> element: counts as a filled line, the baseline dashed, alert
    periods shaded with their kind in a tooltip."""
    n = len(chart.counts)
    top = max([*chart.counts, *(b for b in chart.baseline if b is not None), 1])
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    end_s = chart.start_s + n * chart.step_s

    def x(i: float) -> float:
        return PAD_LEFT + plot_w * i / max(n - 1, 1)

    def y(v: float) -> float:
        return PAD_TOP + plot_h * (1 - v / top)

    parts: list[str] = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(title)}" '
        f'data-total="{chart.total}" data-points="{n}">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{PAD_LEFT}" y="{PAD_TOP}" width="{plot_w}" height="{plot_h}" '
        'fill="#fafafa" stroke="#ddd"/>',
    ]
    for span in chart.spans:
        a = max(span.start_s, chart.start_s)
        b = min(span.end_s, end_s)
        if b <= a:
            continue
        x0 = x((a - chart.start_s) / chart.step_s)
        x1 = x((b - chart.start_s) / chart.step_s)
        label = f"{span.kind} alert" + (" (firing)" if span.ongoing else "")
        parts.append(
            f'<rect class="alert alert-{escape(span.kind)}" x="{x0:.1f}" y="{PAD_TOP}" '
            f'width="{max(x1 - x0, 2):.1f}" height="{plot_h}" '
            f'fill="{KIND_FILL.get(span.kind, "#d9534f")}" fill-opacity="0.18">'
            f"<title>{escape(label)}</title></rect>"
        )
    line = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(chart.counts))
    area = f"{x(0):.1f},{y(0):.1f} {line} {x(n - 1):.1f},{y(0):.1f}"
    parts.append(
        f'<polygon class="counts-area" points="{area}" fill="#4a90d9" fill-opacity="0.15"/>'
    )
    parts.append(
        f'<polyline class="counts" points="{line}" fill="none" stroke="#2a6db0" '
        'stroke-width="1.2"/>'
    )
    # The baseline: one dashed run per stretch with history.
    run: list[str] = []
    runs: list[list[str]] = []
    for i, expected in enumerate(chart.baseline):
        if expected is None:
            if run:
                runs.append(run)
            run = []
            continue
        run.append(f"{x(i):.1f},{y(expected):.1f}")
    if run:
        runs.append(run)
    for r in runs:
        parts.append(
            f'<polyline class="baseline" points="{" ".join(r)}" fill="none" stroke="#555" '
            'stroke-width="1" stroke-dasharray="4 3"/>'
        )
    parts += [
        f'<text x="{PAD_LEFT - 4}" y="{PAD_TOP + 4}" {_RIGHT}>{top:g}</text>',
        f'<text x="{PAD_LEFT - 4}" y="{PAD_TOP + plot_h}" {_RIGHT}>0</text>',
        f'<text x="{PAD_LEFT}" y="{HEIGHT - 5}" font-size="10">'
        f"{escape(_fmt_time(chart.start_s, chart.step_s))}</text>",
        f'<text x="{WIDTH - PAD_RIGHT}" y="{HEIGHT - 5}" font-size="10" text-anchor="end">'
        f"{escape(_fmt_time(end_s, chart.step_s))}</text>",
        f'<text x="{PAD_LEFT}" y="12" font-size="11" font-weight="bold">{escape(title)} '
        f"({chart.total:,} in range)</text>",
        "</svg>",
    ]
    return Markup("".join(parts))  # noqa: S704 - every text above went through escape()
