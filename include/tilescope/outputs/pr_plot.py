"""An evaluation's precision–recall curves at IoU 0.5 as a PNG (matplotlib, headless)."""

from __future__ import annotations

import io

import numpy as np

from tilescope.evaluation import RECALL_POINTS, Evaluation


def pr_curve_png(evaluation: Evaluation) -> bytes:
    """One curve per class that has objects, and the mean over them, with AP50 in the legend."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(6.4, 4.8), dpi=100)
    curves = {name: np.asarray(points) for name, points in evaluation.pr50.items()
              if points and min(points) > -1}
    for name, points in curves.items():
        ap50 = evaluation.per_class[name].AP50
        axes.plot(RECALL_POINTS, points, linewidth=1,
                  label=f"{name} (AP50 {ap50:.3f})" if ap50 is not None else name)
    if curves:
        mean = np.mean(np.stack(list(curves.values())), axis=0)
        axes.plot(RECALL_POINTS, mean, color="black", linewidth=2.5,
                  label=f"all classes (AP50 {evaluation.AP50 or 0:.3f})")
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
             title="precision–recall at IoU 0.5")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left", fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    pyplot.close(figure)
    return buffer.getvalue()
