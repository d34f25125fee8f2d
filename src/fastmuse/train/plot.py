"""Training curves as a PNG, drawn with Pillow (no plotting dependency)."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189)]


def plot_curves(records: Sequence[dict], keys: Sequence[str], title: str = "",
                size: tuple[int, int] = (640, 360)) -> Image.Image:
    """One line per key over `step` (records lacking a key are skipped), shared y axis."""
    w, h = size
    left, right, top, bottom = 56, 12, 28, 36
    series = {k: [(r["step"], float(r[k])) for r in records if r.get(k) is not None and "step" in r]
              for k in keys}
    series = {k: v for k, v in series.items() if v}
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    d.text((left, 8), title, fill="black")
    if not series:
        d.text((left, h // 2), "no data", fill="black")
        return img
    xs = [x for v in series.values() for x, _ in v]
    ys = [y for v in series.values() for _, y in v]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    y0, y1 = min(ys), max(max(ys), min(ys) + 1e-6)

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (w - left - right),
                h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom))

    d.rectangle([left, top, w - right, h - bottom], outline=(160, 160, 160))
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        d.text((4, px(x0, y)[1] - 6), f"{y:.3g}", fill="black")
        x = x0 + (x1 - x0) * i / 4
        d.text((px(x, y0)[0] - 10, h - bottom + 6), f"{x:.0f}", fill="black")
    for i, (k, v) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        if len(v) > 1:
            d.line([px(x, y) for x, y in v], fill=colour, width=2)
        else:
            cx, cy = px(*v[0])
            d.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour)
        d.text((w - right - 150, top + 6 + 14 * i), k, fill=colour)
    d.text((w // 2 - 10, h - 14), "step", fill="black")
    return img
