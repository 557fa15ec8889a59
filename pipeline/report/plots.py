"""The report's figure: SDR/SIR/SAR box plots over tracks, published medians as reference
lines."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

# Published MUSDB18 test-set median SDRs in dB (museval BSSEval v4), drawn as reference lines.
# Spleeter paper (JOSS 2020), 4stems with multichannel Wiener filtering; open-unmix README, UMX.
PUBLISHED_SDR: dict[str, dict[str, float]] = {
    "Spleeter 4stems (Wiener)": {"vocals": 6.86, "drums": 6.71, "bass": 5.51, "other": 4.55},
    "Open-Unmix UMX": {"vocals": 6.32, "drums": 5.73, "bass": 5.23, "other": 4.02},
}
PLOT_METRICS = ("sdr", "sir", "sar")
_REFERENCE_STYLES = (("#d62728", "--"), ("#1f77b4", ":"))  # (colour, dash) per PUBLISHED_SDR


def metrics_boxplot_png(
    values: Mapping[tuple[str, str], Sequence[float]], stems: Sequence[str], metrics: Sequence[str]
) -> bytes:
    """SiSEC-style figure: one panel per metric, one box per stem over tracks (values in dB),
    published SDR lines. Returns PNG bytes, 100 dpi, (3.6 * panels + 0.4) x 3.6 inches."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(3.6 * len(metrics) + 0.4, 3.6), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        data = [list(values.get((metric, s), ())) for s in stems]
        ax.boxplot(
            data,
            tick_labels=list(stems),
            widths=0.6,
            medianprops={"color": "black"},
            flierprops={"markersize": 3},
        )
        if metric == "sdr":
            handles = []
            for (name, ref), (color, dash) in zip(
                PUBLISHED_SDR.items(), _REFERENCE_STYLES, strict=True
            ):
                for pos, stem in enumerate(stems, start=1):
                    if stem in ref:
                        ax.hlines(
                            ref[stem],
                            pos - 0.4,
                            pos + 0.4,
                            colors=color,
                            linestyles=dash,
                            linewidth=1.6,
                        )
                if any(stem in ref for stem in stems):
                    handles.append(
                        Line2D([], [], color=color, linestyle=dash, label=f"{name} median")
                    )
            if handles:
                ax.legend(handles=handles, fontsize=7, loc="lower left")
        ax.set_title(metric.upper())
        ax.set_ylabel("dB")
        ax.grid(axis="y", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
