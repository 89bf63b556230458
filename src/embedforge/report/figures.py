"""The report's figures, each a function of plain data that returns PNG bytes.

Figures are drawn on matplotlib's Agg canvas directly, never through pyplot, so
they need no display and share no global figure state between calls.
"""

from __future__ import annotations

import math
from io import BytesIO

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 110
WIDTH_INCHES = 10.0
PANELS_PER_ROW = 3
KIND_COLOURS = {"similar": "#2a9d8f", "dissimilar": "#e76f51"}
LOSS_PART_PREFIX = "train.loss."
LEGEND_HEADROOM = 1.5  # y-axis stretch that keeps a top legend off the bars


def png(figure: Figure) -> bytes:
    buffer = BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def panel_grid(count: int, panel_height: float) -> tuple[Figure, list]:
    """A figure of ``count`` panels, at most PANELS_PER_ROW a row, and its axes in reading order."""
    columns = min(count, PANELS_PER_ROW)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(WIDTH_INCHES, panel_height * rows), dpi=DPI, layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for unused in axes[count:]:
        unused.set_axis_off()
    return figure, list(axes[:count])


def training_curves(steps: pd.DataFrame, epochs: pd.DataFrame | None) -> bytes:
    """Training loss (total, and each objective when there are several) and learning rate against step.

    Validation loss per epoch, where ``epochs`` has it, is drawn on the loss panel at the
    step the epoch ended, so over- or under-fitting shows next to the training loss.
    """
    figure, (loss_axes, lr_axes) = panel_grid(2, 3.6)
    loss_axes.plot(steps["step"], steps["train.loss"], label="training loss (total)", color="#264653")
    parts = [column for column in steps.columns if column.startswith(LOSS_PART_PREFIX)]
    if len(parts) > 1:
        for column in parts:
            loss_axes.plot(steps["step"], steps[column], label=column.removeprefix(LOSS_PART_PREFIX), alpha=0.7)
    if epochs is not None and "val.val_loss" in epochs and epochs["val.val_loss"].notna().any():
        loss_axes.plot(epochs["step"], epochs["val.val_loss"], "o--", label="validation loss", color="#e76f51")
    loss_axes.set(title="Loss", xlabel="step", ylabel="loss")
    loss_axes.legend(fontsize="small")
    lr_axes.plot(steps["step"], steps["train.lr"], color="#2a9d8f")
    lr_axes.set(title="Learning rate", xlabel="step", ylabel="learning rate")
    lr_axes.set_ylim(bottom=0)
    lr_axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for axes in (loss_axes, lr_axes):
        axes.grid(alpha=0.3)
    return png(figure)


def cosine_histograms(pairs: pd.DataFrame, similar_min: float, dissimilar_max: float) -> bytes:
    """Cosine of similar and dissimilar pairs, one panel per model, with the separation targets marked."""
    models = list(dict.fromkeys(pairs["model"]))
    figure, panels = panel_grid(len(models), 3.4)
    bins = np.linspace(min(pairs["cosine"].min(), dissimilar_max), max(pairs["cosine"].max(), similar_min), 41)
    for axes, model in zip(panels, models):
        rows = pairs[pairs["model"] == model]
        for kind, colour in KIND_COLOURS.items():
            cosine = rows.loc[rows["kind"] == kind, "cosine"].dropna()
            axes.hist(cosine, bins=bins, density=True, alpha=0.6, color=colour, label=f"{kind} ({len(cosine)})")
        for kind, target, label in (("similar", similar_min, "≥"), ("dissimilar", dissimilar_max, "≤")):
            axes.axvline(
                target, color=KIND_COLOURS[kind], linestyle="--", label=f"{kind} mean target {label} {target:g}"
            )
        axes.set(title=model, xlabel="cosine similarity", ylabel="density")
        axes.set_ylim(top=axes.get_ylim()[1] * LEGEND_HEADROOM)
        axes.legend(fontsize="small", loc="upper left")
        axes.grid(alpha=0.3)
    return png(figure)


def sts_scatter(pairs: pd.DataFrame) -> bytes:
    """Predicted cosine against the human (gold) score, one panel per split: a tight rising band is good."""
    splits = list(dict.fromkeys(pairs["split"]))
    figure, panels = panel_grid(len(splits), 3.4)
    for axes, split in zip(panels, splits):
        rows = pairs[pairs["split"] == split].dropna(subset=["gold", "predicted"])
        axes.scatter(rows["gold"], rows["predicted"], s=8, alpha=0.35, color="#264653", edgecolors="none")
        axes.set(title=f"{split} ({len(rows)} pairs)", xlabel="gold score", ylabel="predicted cosine")
        axes.grid(alpha=0.3)
    return png(figure)


def embedding_map(points: pd.DataFrame) -> bytes:
    """The 2-D t-SNE map, one colour per label: sentences of one label should gather."""
    labels = points["label"].fillna("unlabelled").astype(str)
    names = sorted(labels.unique())
    palette = colormaps["tab10" if len(names) <= 10 else "tab20"]
    figure = Figure(figsize=(WIDTH_INCHES, 6.5), dpi=DPI, layout="constrained")
    axes = figure.subplots()
    for index, name in enumerate(names):
        chosen = points[labels == name]
        axes.scatter(
            chosen["x"],
            chosen["y"],
            s=12,
            alpha=0.75,
            color=palette(index % palette.N),
            label=f"{name} ({len(chosen)})",
        )
    axes.set(title="Student embeddings, t-SNE", xticks=[], yticks=[])
    axes.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", title="label")
    return png(figure)
