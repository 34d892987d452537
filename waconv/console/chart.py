"""The ads page's daily chart, drawn on the server as SVG: no JavaScript, no build step."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

from waconv.reports import Day

WIDTH, HEIGHT = 720, 220  # viewBox units; the SVG scales to the page's width
LEFT, BOTTOM, TOP = 40, 24, 10


def _ticks(top: int) -> list[int]:
    if top <= 4:
        return list(range(top + 1))
    step = max(1, round(top / 4))
    return list(range(0, top + 1, step))


def daily_chart(days: Sequence[Day]) -> Markup:
    """Clicks as bars, conversions as narrower bars inside them, per UTC day."""
    top = max([1, *(d.clicks for d in days), *(d.conversions for d in days)])
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    slot = plot_w / max(1, len(days))
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        'aria-labelledby="chart-title chart-desc" preserveAspectRatio="none">',
        '<title id="chart-title">Clicks and conversions per day (UTC)</title>',
        f'<desc id="chart-desc">{len(days)} days; at most {top} a day. '
        "The table below the chart holds the same figures.</desc>",
    ]
    for tick in _ticks(top):
        y = TOP + plot_h - plot_h * tick / top
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - 8}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="axis" x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{tick}</text>'
        )
    label_every = max(1, len(days) // 8)
    for i, d in enumerate(days):
        x = LEFT + i * slot
        h_clicks = plot_h * d.clicks / top
        h_conv = plot_h * d.conversions / top
        label = escape(f"{d.day.isoformat()}: {d.clicks} clicks, {d.conversions} conversions")
        parts.append(
            f"<g><title>{label}</title>"
            f'<rect class="clicks" x="{x + slot * 0.1:.1f}" y="{TOP + plot_h - h_clicks:.1f}" '
            f'width="{slot * 0.8:.1f}" height="{h_clicks:.1f}"/>'
            f'<rect class="conversions" x="{x + slot * 0.3:.1f}" '
            f'y="{TOP + plot_h - h_conv:.1f}" width="{slot * 0.4:.1f}" height="{h_conv:.1f}"/>'
            "</g>"
        )
        if i % label_every == 0:
            parts.append(
                f'<text class="axis" x="{x + slot / 2:.1f}" y="{HEIGHT - 6}" '
                f'text-anchor="middle">{d.day.strftime("%m-%d")}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 (every interpolated text is escaped or numeric)
