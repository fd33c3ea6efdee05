"""Plots: pure functions from analysis DataFrames to matplotlib Figures.

No pyplot state: each function builds and returns its own Figure, so notebooks display it and
scripts save it. Every figure colours a loss the same way (``LOSS_STYLE``).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from study.analysis import Study

# One colour per loss across every figure; scce repeats cce's maths, so it shares cce's
# colour with a dashed line (where it hides cce, the two agree, as they must).
LOSS_STYLE = {
    "bce": {"color": "#1f77b4", "linestyle": "-"},
    "cce": {"color": "#2ca02c", "linestyle": "-"},
    "scce": {"color": "#2ca02c", "linestyle": (0, (4, 3))},
    "mse": {"color": "#d62728", "linestyle": "-"},
    "mse_softmax": {"color": "#ff7f0e", "linestyle": "-"},
    "quadratic": {"color": "#9467bd", "linestyle": "-"},
}
LOSS_LABEL = {"bce": "bce (cross-entropy)", "quadratic": "quadratic ½(a-y)²"}


def _figure(ncols: int = 1, nrows: int = 1, width: float = 5.5, height: float = 4.0,
            **kwargs) -> tuple[Figure, np.ndarray]:
    figure = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False, **kwargs)
    return figure, axes


def _style(ax) -> None:
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


# ---- Nielsen's single neuron (configs/neuron.yaml) ------------------------------------------


def neuron_outputs(study: Study) -> Figure:
    """The book's figures: the neuron's output against epoch from each start, per cost."""
    output = study.metric("output")
    starts = sorted(output["severity"].unique())
    figure, axes = _figure(len(starts), sharey=True)
    for ax, start in zip(axes[0], starts, strict=True):
        for loss, curve in output[output["severity"] == start].groupby("loss"):
            ax.plot(curve["step"], curve["value"], label=LOSS_LABEL.get(loss, loss),
                    lw=2, **LOSS_STYLE[loss])
        weights = study.metric("weight"), study.metric("bias")
        w0, b0 = (m[(m["severity"] == start) & (m["step"] == 0)]["value"].iloc[0]
                  for m in weights)
        ax.set_title(f"start (w, b) = ({w0:.1f}, {b0:.1f}): output {start:g}")
        ax.set_xlabel("epoch (one gradient step each)")
        ax.axhline(0, color="black", lw=0.8)
        _style(ax)
    axes[0, 0].set_ylabel("output a = σ(w·1 + b)   (target y = 0)")
    axes[0, 0].set_ylim(-0.02, 1.0)
    axes[0, -1].legend()
    figure.suptitle("One sigmoid neuron learning x = 1 → y = 0 (Nielsen, ch. 3), lr = "
                    f"{study.arms['lr'].iloc[0]:g}")
    return figure


def neuron_gradients(study: Study) -> Figure:
    """|dC/dw| against the output a: the quadratic cost's gradient vanishes as a -> 1."""
    figure, axes = _figure(width=6.5, height=4.5)
    ax = axes[0, 0]
    a = np.linspace(0.001, 0.999, 400)
    # With x = 1 and y = 0: quadratic dC/dw = (a - y) a (1 - a); cross-entropy dC/dw = a - y.
    ax.plot(a, a * a * (1 - a), color=LOSS_STYLE["quadratic"]["color"], alpha=0.35, lw=6,
            label="quadratic: (a - y) σ'(z) x")
    ax.plot(a, a, color=LOSS_STYLE["bce"]["color"], alpha=0.35, lw=6,
            label="cross-entropy: (a - y) x")
    markers = dict(zip(sorted(study.arms["severity"].unique()), ["o", "s", "^", "v"],
                       strict=False))
    for (loss, start), arm in study.history.groupby(["loss", "severity"]):
        wide = arm.pivot_table(index="step", columns="metric", values="value")
        ax.plot(wide["output"], wide["grad_w"].abs(), linestyle="none", ms=3,
                marker=markers[start], color=LOSS_STYLE[loss]["color"],
                label=f"{loss}, start {start:g} (logged)")
    ax.set_xlabel("output a")
    ax.set_ylabel("|dC/dw|")
    ax.set_title("Why the confident wrong start learns slowly under the quadratic cost")
    ax.legend(fontsize=8)
    _style(ax)
    return figure
