"""Plots: pure functions from analysis DataFrames to matplotlib Figures.

No pyplot state: each function builds and returns its own Figure, so notebooks display it and
scripts save it. Every figure colours a loss the same way (``loss_style``): the registered
losses have fixed colours, any other loss gets the next colour of a palette, and a loss under
an optimizer ("mse · adam") keeps its loss's colour with the optimizer's line style.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from study.analysis import Study, kaplan_meier, start_name
from study.analysis.convergence import condition_name, loss_order, median_ci, start_order
from study.palette import LOSS_COLOURS, colour

# One colour per loss across every figure (study.palette); scce's line is dashed over cce's
# (where it hides cce, the two agree, as they must).
LOSS_STYLE = {loss: {"color": colour, "linestyle": (0, (4, 3)) if loss == "scce" else "-"}
              for loss, colour in LOSS_COLOURS.items()}
# An optimizer's line style, in the order the study's optimizers are first drawn, so that
# variants of one optimizer (sgd, sgd(momentum=0.9)) get styles of their own.
OPTIMIZER_LINES = ["-", (0, (5, 2)), (0, (1, 1)), (0, (5, 2, 1, 2)), (0, (8, 2, 1, 2, 1, 2)),
                   (0, (2, 2)), (0, (3, 1, 1, 1, 1, 1))]
_OPTIMIZER_LINE: dict[str, object] = {}


def loss_style(name: str) -> dict:
    """Colour and line style of a loss, or of a loss under an optimizer ("mse · adam")."""
    from study.analysis.convergence import UNDER

    loss, _, optimizer = name.partition(UNDER)
    style = dict(LOSS_STYLE.get(loss, {"color": colour(loss), "linestyle": "-"}))
    if optimizer:
        line = _OPTIMIZER_LINE.setdefault(
            optimizer, OPTIMIZER_LINES[len(_OPTIMIZER_LINE) % len(OPTIMIZER_LINES)])
        style["linestyle"] = line
    return style


LOSS_MARKER = {"scce": "D"}  # in point plots, where a dash cannot tell scce from cce
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
                    lw=2, **loss_style(loss))
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
                marker=markers[start], color=loss_style(loss)["color"],
                label=f"{loss}, start {start:g} (logged)")
    ax.set_xlabel("output a")
    ax.set_ylabel("|dC/dw|")
    ax.set_title("Why the confident wrong start learns slowly under the quadratic cost")
    ax.legend(fontsize=8)
    _style(ax)
    return figure


# ---- convergence report ---------------------------------------------------------------------


def _columns(n: int, widest: int) -> int:
    """Columns for n panels and their legend: no empty cell where possible (the legend
    takes one spare cell, or sits outside when the panels fill the grid), then the widest."""
    if n <= widest:
        return n

    def empty(columns: int) -> int:
        return max(-(-n // columns) * columns - n - 1, 0)

    return min(range(widest, 1, -1), key=lambda c: (empty(c), -c))


def _panel_grid(n: int, ncols: int = 4, **kwargs) -> tuple[Figure, list]:
    """n panels in rows of at most ``ncols``; a spare cell is kept for the legend
    (``_legend`` puts it there), and any other cell is removed."""
    ncols = _columns(n, ncols)
    nrows = -(-n // ncols)
    figure, axes = _figure(ncols, nrows, width=4.2, height=3.4, **kwargs)
    flat = list(axes.ravel())
    for ax in flat[n + 1:]:
        ax.remove()
    figure.spare = flat[n] if len(flat) > n else None
    if figure.spare is not None:
        figure.spare.set_axis_off()
    return figure, flat[:n]


def _start_panels(frame: pd.DataFrame, xlabel: str = "step"):
    """One panel per start (init, severity) on a shared symlog step axis, so that step 0 and
    the first updates stay visible; returns the figure, the axes and each panel's rows."""
    starts = start_order(frame)
    figure, axes = _panel_grid(len(starts), sharex=True, sharey=True)
    panels = []
    ncols = axes[0].get_subplotspec().get_gridspec().ncols
    for i, (ax, (init, severity)) in enumerate(zip(axes, starts, strict=True)):
        panels.append((ax, frame[(frame["init"] == init) & (frame["severity"] == severity)]))
        ax.set_title(start_name(init, severity))
        _step_axis(ax)
        if i + ncols >= len(starts):  # no panel below: the axis is labelled here
            ax.set_xlabel(xlabel)
            ax.xaxis.set_tick_params(labelbottom=True)
        _style(ax)
    return figure, axes, panels


def _legend(figure: Figure, axes: list, extra: tuple = ()) -> None:
    """One legend for a grid of panels: in its spare cell, else outside on the right."""
    handles, labels = axes[0].get_legend_handles_labels()
    order = loss_order(label.split(" (lr ")[0] for label in labels)
    pairs = sorted(zip(handles, labels, strict=True),
                   key=lambda p: order.index(p[1].split(" (lr ")[0]))
    handles, labels = [h for h, _ in pairs], [label for _, label in pairs]
    for handle, label in extra:
        handles, labels = handles + [handle], labels + [label]
    spare = getattr(figure, "spare", None)
    if spare is not None:
        spare.legend(handles, labels, loc="center", frameon=False)
    else:
        figure.legend(handles, labels, loc="outside right center", frameon=False)


def _step_axis(ax) -> None:
    """A symlog step axis labelled in plain numbers (0, 1, 10, 100, 1,000), not 10^0."""
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("symlog", linthresh=1)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))


def loss_label(loss: str, arms: pd.DataFrame) -> str:
    """A loss's legend entry, with the learning rate it ran at when that is one rate."""
    rates = arms.loc[arms["condition"] == loss, "lr"].unique()
    return f"{loss} (lr {rates[0]:g})" if len(rates) == 1 else loss


def _median_band(curves: pd.DataFrame) -> pd.DataFrame:
    """Per step: median over seeds and its bootstrap 95% CI."""
    rows = [(step, *median_ci(group["value"].dropna()))
            for step, group in curves.groupby("step") if group["value"].notna().any()]
    return pd.DataFrame(rows, columns=["step", "median", "low", "high"])


def learning_curves(study: Study, arms: pd.DataFrame, metric: str = "val_accuracy",
                    view: str = "") -> Figure:
    """One panel per start; per loss the median over seeds with a bootstrap 95% CI band."""
    history = study.metric(metric).merge(arms[["run_id", "condition"]], on="run_id")
    figure, axes, panels = _start_panels(history, "step (optimizer updates)")
    for ax, start in panels:
        for loss, curves in start.groupby("condition"):
            band = _median_band(curves)
            ax.plot(band["step"], band["median"], label=loss_label(loss, arms), lw=1.8,
                    **loss_style(loss))
            ax.fill_between(band["step"], band["low"], band["high"], alpha=0.15,
                            color=loss_style(loss)["color"], lw=0)
        if metric == "val_accuracy" and np.isfinite(study.target):
            target = ax.axhline(study.target, color="black", lw=0.8, ls=":")
    for ax in axes:
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel(_METRIC_LABEL.get(metric, metric))
    with_target = metric == "val_accuracy" and np.isfinite(study.target)
    _legend(figure, axes, [(target, f"target {study.target:g}")] if with_target else ())
    figure.suptitle(f"{_METRIC_LABEL.get(metric, metric)} by start: median over seeds, "
                    f"95% CI band{f' ({view})' if view else ''}")
    return figure


_METRIC_LABEL = {"val_accuracy": "validation accuracy", "val_nll": "validation NLL (nats)",
                 "val_brier": "validation Brier score", "grad_norm": "gradient norm ||∇L||",
                 "train_loss": "training loss (own loss)"}


def severity_curve(summary: pd.DataFrame, budget: int) -> Figure:
    """Median steps-to-target per start and loss with CI bars; censored cells (some seed
    never reached the target) drawn hollow, at or above the budget line."""
    starts = start_order(summary)
    position = {start: i for i, start in enumerate(starts)}
    figure, axes = _figure(width=max(6.5, 1.3 * len(starts)), height=4.5)
    ax = axes[0, 0]
    offsets = np.linspace(-0.2, 0.2, summary["condition"].nunique())
    for offset, (loss, cells) in zip(offsets, summary.groupby("condition"), strict=True):
        style = loss_style(loss)
        for init, scheme in cells.groupby("init"):  # join the severities of one scheme
            scheme = scheme.sort_values("severity")
            x = [position[(init, s)] + offset for s in scheme["severity"]]
            ax.plot(x, scheme["median_steps"], color=style["color"], lw=1, alpha=0.6,
                    linestyle=style["linestyle"])
        for cell in cells.itertuples():
            x = position[(cell.init, cell.severity)] + offset
            censored = cell.reached < cell.seeds
            ax.errorbar(x, cell.median_steps,
                        yerr=[[max(cell.median_steps - cell.steps_ci_low, 0)],
                              [max(cell.steps_ci_high - cell.median_steps, 0)]],
                        color=style["color"], capsize=3, lw=1)
            ax.plot(x, cell.median_steps, marker="^" if censored else LOSS_MARKER.get(loss, "o"),
                    ms=8,
                    mfc="white" if censored else style["color"], mec=style["color"],
                    linestyle="none",
                    label=f"{loss} (lr {cell.lr})" if cell.Index == cells.index[0] else None)
    ax.axhline(budget, color="black", lw=0.8, ls=":")
    ax.text(len(starts) - 0.5, budget, " budget", va="bottom", ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(starts)), [start_name(*s) for s in starts], rotation=20,
                  ha="right")
    ax.set_ylabel("steps to target (median over seeds)")
    ax.set_title("Steps to target by start (hollow ▲: censored, a lower bound)")
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    _style(ax)
    return figure


def grad_norm_curves(study: Study, arms: pd.DataFrame, max_step: int | None = None) -> Figure:
    """The early phase: the push each arm gets, lr x ||gradient of its own loss||, against
    step, median over seeds, per start. (Raw norms would compare losses whose reductions and
    learning rates differ: Keras sums cce over classes but averages mse.)"""
    history = study.metric("grad_norm").merge(arms[["run_id", "condition"]], on="run_id")
    history = history.assign(value=history["value"] * history["lr"])
    if max_step is None:  # the first two epochs: up to twice the first epoch end
        steps = sorted(history["step"].unique())
        max_step = 2 * steps[_first_epoch_index(steps)]
    history = history[history["step"] <= max_step]
    figure, axes, panels = _start_panels(history)
    for ax, start in panels:
        for loss, curves in start.groupby("condition"):
            med = curves.groupby("step")["value"].median()
            ax.plot(med.index, med.to_numpy(), marker=".", label=loss_label(loss, arms),
                    **loss_style(loss))
        ax.set_yscale("log")
    axes[0].set_ylabel("lr × ||∇ own loss|| (median)")
    _legend(figure, axes)
    figure.suptitle("Early phase: how hard each loss pushes from each start (lr × gradient norm)")
    return figure


def growth(arms: pd.DataFrame, table: pd.DataFrame) -> Figure:
    """Escape time against severity, one panel per init family, log scale: each arm a dot
    (censored arms as triangles at the budget), each loss's median as a marker and its fitted
    law T0 + c e^(b s) as a line over the fit's window, labelled with b and the theory's b."""
    families = list(dict.fromkeys(table["init"]))
    figure, axes = _panel_grid(len(families), ncols=2, sharey=True)
    for ax, init in zip(axes, families, strict=True):
        family = arms[arms["init"] == init]
        for i, (loss, cell) in enumerate(family.groupby("condition")):
            style = loss_style(loss)
            shift = (i - family["condition"].nunique() / 2) * 0.04  # dodge overlapping dots
            done = cell[cell["escape_reached"]]
            ax.scatter(done["severity"] + shift, done["escape_time"].clip(lower=0.5), s=9,
                       color=style["color"], alpha=0.35)
            stalled = cell[~cell["escape_reached"]]
            ax.scatter(stalled["severity"] + shift, stalled["escape_low"], s=30, marker="^",
                       color=style["color"], alpha=0.8)
            times = cell["escape_time"].where(cell["escape_reached"], np.inf)
            medians = times.groupby(cell["severity"]).median()
            ax.plot(medians.index, medians.clip(upper=cell["budget"].max()).to_numpy(),
                    marker="o", ms=4, ls="none", color=style["color"])
            fit = table[(table["init"] == init) & (table["loss"] == cell["loss"].iloc[0])
                        & (table["optimizer"] == cell["optimizer"].iloc[0])]
            label = loss_label(loss, arms)
            if len(fit) and np.isfinite(fit["slope"].iloc[0]):
                row = fit.iloc[0]
                low, high = (float(x) for x in row["severities"].split("-"))
                s_grid = np.linspace(low, high, 100)
                c = row["stall_at_top"] / np.exp(row["slope"] * high)
                theory = "" if np.isnan(row["theory"]) else f", theory {row['theory']:g}"
                ax.plot(s_grid, row["t0"] + c * np.exp(row["slope"] * s_grid), lw=1.6,
                        label=f"{label}: b = {row['slope']:.2f}{theory}", **style)
            else:
                ax.plot([], [], lw=1.6, label=f"{label}: no fit", **style)
        ax.axhline(family["budget"].max(), color="black", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_ylim(top=3 * family["budget"].max())
        symbol = {"saturated_wrong": "m", "scaled": "k"}.get(init, "severity")
        ax.set_xlabel(f"{init} {symbol}")
        ax.set_title(init)
        _style(ax)
        ax.legend(frameon=False, fontsize=7, loc="upper left")
    axes[0].set_ylabel("escape time (steps to the escape level)")
    figure.suptitle("How the stall grows with the start's severity: T0 + c e^(b s), "
                    "dots are arms, ▲ never escaped (budget dotted)")
    return figure


def answer_by_level(table: pd.DataFrame, rule: str = "tuned_on_control") -> Figure:
    """The answer against the level: one panel per family's worst start, each loss's paired
    ratio to the fastest loss at each val_accuracy level (log scale) with its 95% CI, hollow
    where it is a lower bound (the loss never got there in some seeds)."""
    from study.analysis.answer import worst_starts

    starts = worst_starts(table)
    several = table["optimizer"].nunique() > 1
    figure, axes = _figure(ncols=max(len(starts), 1), width=4.2, height=3.8, sharey=True)
    for ax, (init, severity) in zip(axes[0], starts, strict=False):
        cell = table[(table["init"] == init) & (table["severity"] == severity)
                     & (table["lr_rule"] == rule)]
        for (loss, optimizer), rows in cell.groupby(["loss", "optimizer"]):
            name = condition_name(loss, optimizer, several)
            style = loss_style(name)
            rows = rows.sort_values("level")
            ax.plot(rows["level"], rows["ratio"], label=name, lw=1.5, **style)
            for row in rows.itertuples():
                hollow = row.bound in (">=", "?")
                low = row.ratio - row.ci_low if np.isfinite(row.ci_low) else 0
                high = row.ci_high - row.ratio if np.isfinite(row.ci_high) else 0
                ax.errorbar(row.level, row.ratio, yerr=[[max(low, 0)], [max(high, 0)]],
                            color=style["color"], capsize=2, lw=0.8,
                            marker="^" if hollow else LOSS_MARKER.get(loss, "o"), ms=5,
                            mfc="white" if hollow else style["color"])
        ax.axhline(1, color="black", lw=0.8)
        ax.set_yscale("log")
        ax.set_title(start_name(init, severity), fontsize=10)
        ax.set_xlabel("val_accuracy level")
        _style(ax)
    axes[0, 0].set_ylabel("steps / the fastest loss's (paired by seed)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right center", frameon=False)
    figure.suptitle("How many times the fastest loss's steps, by level (▲: a lower bound)")
    return figure


def lr_outcome(arms: pd.DataFrame) -> Figure:
    """Median steps to target from the control against the learning rate, per loss, the
    chosen rate circled: how sensitive a verdict is to the rate it was made at."""
    from study.analysis.convergence import best_lrs, lr_scores

    scores = lr_scores(arms).reset_index()
    chosen = best_lrs(arms)
    figure, axes = _figure()
    ax = axes[0, 0]
    for loss, rows in scores.groupby("condition"):
        style = loss_style(loss)
        ax.plot(rows["lr"], rows["median_steps"], marker=".", label=loss, **style)
        best = rows[rows["lr"] == chosen[loss]]
        ax.scatter(best["lr"], best["median_steps"], s=90, facecolors="none",
                   edgecolors=style["color"], lw=1.5)
    budget = arms["budget"].max()
    ax.axhline(budget, color="0.6", lw=0.8, ls="--", label="budget (never reached)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("median steps to target from the control")
    ax.set_title("Outcome against learning rate (chosen rate circled)")
    _style(ax)
    ax.legend(frameon=False, fontsize="small")
    return figure


def _censored_handle():
    from matplotlib.lines import Line2D

    return Line2D([], [], marker="^", color="0.3", ls="none")


def _first_epoch_index(steps: list[int]) -> int:
    # log-spaced steps are powers of two; the first step that is not one is an epoch end
    for i, step in enumerate(steps):
        if step > 0 and step & (step - 1):
            return i
    return len(steps) - 1


def kaplan_meier_curves(arms: pd.DataFrame, budget: int) -> Figure:
    """Per start and loss, the Kaplan-Meier fraction of seeds that reached the target by each
    step (1 - survival), with its 95% band; censored arms end their curve's support."""
    figure, axes, panels = _start_panels(arms)
    for ax, start in panels:
        for loss, cell in start.groupby("condition"):
            km = kaplan_meier(cell["time"], cell["reached"])
            reached = 1 - km.survival_function_.iloc[:, 0]
            ci = 1 - km.confidence_interval_
            steps = np.append(reached.index.to_numpy(), budget)
            ax.step(steps, np.append(reached.to_numpy(), reached.iloc[-1]), where="post",
                    label=loss_label(loss, arms), lw=1.8, **loss_style(loss))
            ax.fill_between(ci.index, ci.iloc[:, 0], ci.iloc[:, 1], step="post", alpha=0.12,
                            color=loss_style(loss)["color"], lw=0)
        ax.set_ylim(-0.03, 1.03)
    axes[0].set_ylabel("fraction of seeds at target")
    _legend(figure, axes)
    figure.suptitle("Kaplan-Meier time to target (censored at the budget)")
    return figure


def performance_profile_plot(profile: pd.DataFrame) -> Figure:
    """Dolan-Moré profile: fraction of problems solved within tau x the fastest loss."""
    figure, axes = _figure(width=6.5, height=4.2)
    ax = axes[0, 0]
    for loss in profile.columns:
        ax.step(profile.index, profile[loss], where="post", lw=2, label=loss,
                **loss_style(loss))
    if profile.empty:
        ax.text(0.5, 0.5, "no loss reached the target on any problem", ha="center",
                transform=ax.transAxes)
    ax.set_xscale("log")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("τ (steps to target / the fastest loss's, on the same problem)")
    ax.set_ylabel("fraction of problems")
    ax.set_title("Performance profile over (start, seed) problems: higher and further left "
                 "is better", fontsize=10)
    if len(profile.columns):
        ax.legend(frameon=False)
    _style(ax)
    return figure
