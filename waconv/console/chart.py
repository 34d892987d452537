"""The ads page's daily chart, drawn on the server as SVG: no JavaScript, no build step."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

from waconv.reports import Day

# The bars stretch to the page's width (viewBox units, preserveAspectRatio="none"); the axis
# text lives in SVGs that never stretch (pixels), so it reads the same on a phone and a wide
# screen. HEIGHT is the CSS height of .chart-plot and .chart-y, in pixels.
WIDTH, HEIGHT = 720, 200
TOP = 8  # room for the top tick's label
Y_AXIS = 40  # pixels for the counts left of the plot
X_LABELS = 8  # dates under the plot, at most: "MM-DD" fits eight to a phone's width


def _ticks(top: int) -> list[int]:
    if top <= 4:
        return list(range(top + 1))
    step = max(1, round(top / 4))
    return list(range(0, top + 1, step))


def daily_chart(days: Sequence[Day]) -> Markup:
    """Clicks as bars, conversions as narrower bars inside them, per UTC day."""
    top = max([1, *(d.clicks for d in days), *(d.conversions for d in days)])
    plot_h = HEIGHT - TOP
    slot = WIDTH / max(1, len(days))

    def y_of(value: float) -> float:
        return TOP + plot_h - plot_h * value / top

    y_axis = [
        f'<svg class="chart-y" width="{Y_AXIS}" height="{HEIGHT}" aria-hidden="true">',
        *(
            f'<text class="axis" x="{Y_AXIS - 4}" y="{y_of(t) + 4:.1f}" text-anchor="end">'
            f"{t}</text>"
            for t in _ticks(top)
        ),
        "</svg>",
    ]
    plot = [
        f'<svg class="chart-plot" viewBox="0 0 {WIDTH} {HEIGHT}" preserveAspectRatio="none" '
        'role="img" aria-labelledby="chart-title chart-desc">',
        '<title id="chart-title">Clicks and conversions per day (UTC)</title>',
        f'<desc id="chart-desc">{len(days)} days; at most {top} a day. '
        "The table below the chart holds the same figures.</desc>",
        *(
            f'<line class="grid" x1="0" x2="{WIDTH}" y1="{y_of(t):.1f}" y2="{y_of(t):.1f}" '
            'vector-effect="non-scaling-stroke"/>'
            for t in _ticks(top)
        ),
    ]
    x_axis = ['<svg class="chart-x" width="100%" height="18" aria-hidden="true">']
    label_every = max(1, -(-len(days) // X_LABELS))
    for i, d in enumerate(days):
        x = i * slot
        h_clicks = plot_h * d.clicks / top
        h_conv = plot_h * d.conversions / top
        label = escape(f"{d.day.isoformat()}: {d.clicks} clicks, {d.conversions} conversions")
        plot.append(
            f"<g><title>{label}</title>"
            f'<rect class="clicks" x="{x + slot * 0.1:.2f}" y="{y_of(d.clicks):.1f}" '
            f'width="{slot * 0.8:.2f}" height="{h_clicks:.1f}"/>'
            f'<rect class="conversions" x="{x + slot * 0.3:.2f}" '
            f'y="{y_of(d.conversions):.1f}" width="{slot * 0.4:.2f}" height="{h_conv:.1f}"/>'
            "</g>"
        )
        if i % label_every == 0:
            # A percentage of the axis's width: the same place as the stretched bar's middle.
            x_axis.append(
                f'<text class="axis" x="{100 * (x + slot / 2) / WIDTH:.2f}%" y="13" '
                f'text-anchor="middle">{d.day.strftime("%m-%d")}</text>'
            )
    plot.append("</svg>")
    x_axis.append("</svg>")
    parts = ['<div class="chart">', *y_axis, *plot, "<span></span>", *x_axis, "</div>"]
    return Markup("".join(parts))  # noqa: S704 (every interpolated text is escaped or numeric)
