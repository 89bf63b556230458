"""The report's figures, each a function of plain data that returns a ``Drawing``: PNG bytes and notes.

Figures are drawn on matplotlib's Agg canvas directly, never through pyplot, so
they need no display and share no global figure state between calls. A panel the
data cannot fill (one logged step, a constant learning rate, a split without
pairs) is left out and said in words instead: an empty axes reads as a bug.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

DPI = 110
WIDTH_INCHES = 10.0
PANELS_PER_ROW = 3
KIND_COLOURS = {"similar": "#2a9d8f", "dissimilar": "#e76f51"}
STEP_LOSS = "step.loss"  # plots/train/steps.csv, one row per optimiser step
STEP_LR = "step.lr"
LOSS_PART_PREFIX = "step.loss."
VAL_LOSS = "val.val_loss"  # plots/train/epochs.csv
MIN_CURVE_POINTS = 2  # a line through one point draws nothing
LEGEND_HEADROOM = 1.5  # y-axis stretch that keeps a top legend off the bars
FRONTIER_COLOUR = "#2a6f97"
DOMINATED_COLOUR = "#9aa5b1"
THIS_RUN_COLOUR = "#e76f51"
FRONTIER_MARGIN = 0.12
SPEED_TICKS = (1.0, 2.0, 3.0, 5.0)  # per power of ten: a speed ratio reads as "3×", not "10^0.5"


@dataclass(frozen=True)
class Drawing:
    """A figure's PNG (None when the data fills no panel) and, in words, every panel left out and why."""

    png: bytes | None
    notes: tuple[str, ...] = ()


def png(figure: Figure) -> bytes:
    buffer = BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def panel_grid(count: int, panel_height: float) -> tuple[Figure, list[Axes]]:
    """A figure of ``count`` panels, at most PANELS_PER_ROW a row, and its axes in reading order."""
    columns = min(count, PANELS_PER_ROW)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(WIDTH_INCHES, panel_height * rows), dpi=DPI, layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for unused in axes[count:]:
        unused.set_axis_off()
    return figure, list(axes[:count])


def too_short(steps: pd.DataFrame) -> str:
    if steps.empty:
        return "Training logged no steps: no loss or learning-rate curve to draw."
    first = steps.iloc[0]
    return (
        f"Training logged 1 step: too short for a loss or learning-rate curve "
        f"(loss {first[STEP_LOSS]:.3f}, learning rate {first[STEP_LR]:.2e})."
    )


def draw_loss(axes: Axes, steps: pd.DataFrame, epochs: pd.DataFrame | None) -> None:
    axes.plot(steps["step"], steps[STEP_LOSS], label="training loss (total)", color="#264653")
    parts = [
        column
        for column in steps.columns
        if column.startswith(LOSS_PART_PREFIX) and steps[column].count() >= MIN_CURVE_POINTS
    ]
    if len(parts) > 1:
        for column in parts:
            axes.plot(steps["step"], steps[column], label=column.removeprefix(LOSS_PART_PREFIX), alpha=0.7)
    if epochs is not None and VAL_LOSS in epochs and epochs[VAL_LOSS].notna().any():
        axes.plot(epochs["step"], epochs[VAL_LOSS], "o--", label="validation loss", color="#e76f51")
    axes.set(title="Loss", xlabel="step", ylabel="loss")
    axes.legend(fontsize="small")


def draw_lr(axes: Axes, steps: pd.DataFrame) -> None:
    axes.plot(steps["step"], steps[STEP_LR], color="#2a9d8f")
    axes.set(title="Learning rate", xlabel="step", ylabel="learning rate")
    axes.set_ylim(bottom=0)
    axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))


def training_curves(steps: pd.DataFrame, epochs: pd.DataFrame | None) -> Drawing:
    """Training loss (total, and each objective when there are several) and learning rate against step.

    Validation loss per epoch, where ``epochs`` has it, is drawn on the loss panel at the
    step the epoch ended, so over- or under-fitting shows next to the training loss. A run
    too short for a curve, or a learning rate that never moved, gets a sentence instead.
    """
    if len(steps) < MIN_CURVE_POINTS:
        return Drawing(None, (too_short(steps),))
    losses, rates = steps[STEP_LOSS].dropna(), steps[STEP_LR].dropna()
    notes = []
    show_loss = len(losses) >= MIN_CURVE_POINTS
    if not show_loss:
        notes.append(f"Only {len(losses)} of the {len(steps)} logged steps recorded a loss: too few for a loss curve.")
    elif epochs is not None and epochs.empty:
        notes.append("No epoch was logged: no validation loss to mark on the loss curve.")
    show_lr = len(rates) >= MIN_CURVE_POINTS and bool(rates.min() < rates.max())
    if len(rates) < MIN_CURVE_POINTS:
        notes.append(
            f"Only {len(rates)} of the {len(steps)} logged steps recorded a learning rate: too few for its curve."
        )
    elif not show_lr:
        notes.append(f"The learning rate stayed at {rates.iloc[0]:.2e} for all {len(rates)} steps: no curve to draw.")
    if not (show_loss or show_lr):
        return Drawing(None, tuple(notes))
    figure, panels = panel_grid(int(show_loss) + int(show_lr), 3.6)
    if show_loss:
        draw_loss(panels[0], steps, epochs)
    if show_lr:
        draw_lr(panels[-1], steps)
    for axes in panels:
        axes.grid(alpha=0.3)
    return Drawing(png(figure), tuple(notes))


def groups_with_data(
    groups: pd.Series, usable: pd.Series, sentence: Callable[[str], str]
) -> tuple[list[str], tuple[str, ...]]:
    """The groups (models, splits) in order that have rows to draw, and a sentence for each that has none."""
    everyone = list(dict.fromkeys(groups))
    shown = [group for group in everyone if (usable == group).any()]
    return shown, tuple(sentence(group) for group in everyone if group not in shown)


def cosine_histograms(pairs: pd.DataFrame, similar_min: float, dissimilar_max: float) -> Drawing:
    """Cosine of similar and dissimilar pairs, one panel per model, with the separation targets marked.

    A model without one similar or dissimilar pair that has a cosine gets no panel, but a sentence.
    """
    usable = pairs[pairs["kind"].isin(KIND_COLOURS)].dropna(subset=["cosine"])
    shown, notes = groups_with_data(
        pairs["model"],
        usable["model"],
        lambda model: f"No similar or dissimilar pair of the {model} has a cosine: no histogram to draw for it.",
    )
    if not shown:
        return Drawing(None, notes)
    figure, panels = panel_grid(len(shown), 3.4)
    bins = np.linspace(min(usable["cosine"].min(), dissimilar_max), max(usable["cosine"].max(), similar_min), 41)
    for axes, model in zip(panels, shown, strict=False):
        rows = usable[usable["model"] == model]
        for kind, colour in KIND_COLOURS.items():
            cosine = rows.loc[rows["kind"] == kind, "cosine"]
            axes.hist(cosine, bins=bins, density=True, alpha=0.6, color=colour, label=f"{kind} ({len(cosine)})")
        for kind, target, label in (("similar", similar_min, "≥"), ("dissimilar", dissimilar_max, "≤")):
            axes.axvline(
                target, color=KIND_COLOURS[kind], linestyle="--", label=f"{kind} mean target {label} {target:g}"
            )
        axes.set(title=model, xlabel="cosine similarity", ylabel="density")
        axes.set_ylim(top=axes.get_ylim()[1] * LEGEND_HEADROOM)
        axes.legend(fontsize="small", loc="upper left")
        axes.grid(alpha=0.3)
    return Drawing(png(figure), notes)


def sts_scatter(pairs: pd.DataFrame) -> Drawing:
    """Predicted cosine against the human (gold) score, one panel per split: a tight rising band is good.

    A split without one pair that has both numbers gets no panel, but a sentence.
    """
    if pairs.empty:
        return Drawing(None, ("No STS split was scored (evaluate.sts_splits is empty): no scatter to draw.",))
    scored = pairs.dropna(subset=["gold", "predicted"])
    shown, notes = groups_with_data(
        pairs["split"],
        scored["split"],
        lambda split: f"No pair of {split} has both a gold score and a predicted cosine: no scatter to draw for it.",
    )
    if not shown:
        return Drawing(None, notes)
    figure, panels = panel_grid(len(shown), 3.4)
    for axes, split in zip(panels, shown, strict=False):
        rows = scored[scored["split"] == split]
        axes.scatter(rows["gold"], rows["predicted"], s=8, alpha=0.35, color="#264653", edgecolors="none")
        axes.set(title=f"{split} ({len(rows)} pairs)", xlabel="gold score", ylabel="predicted cosine")
        axes.grid(alpha=0.3)
    return Drawing(png(figure), notes)


def embedding_map(points: pd.DataFrame) -> Drawing:
    """The 2-D t-SNE map, one colour per label: sentences of one label should gather."""
    placed = points.dropna(subset=["x", "y"])
    if placed.empty:
        return Drawing(None, ("No sentence of the embedding map has coordinates: no map to draw.",))
    labels = placed["label"].fillna("unlabelled").astype(str)
    names = sorted(labels.unique())
    palette = colormaps["tab10" if len(names) <= 10 else "tab20"]
    figure = Figure(figsize=(WIDTH_INCHES, 6.5), dpi=DPI, layout="constrained")
    axes = figure.subplots()
    for index, name in enumerate(names):
        chosen = placed[labels == name]
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
    return Drawing(png(figure), ())


THIS_RUN_MARKS = (  # column of points, marker, size, legend label, whether a point off the frontier is labelled
    ("exported", "D", 90, "this run, exported (ONNX)", True),
    ("this_run", "*", 260, "this run", False),
)


def mark_this_run(axes: Axes, points: pd.DataFrame) -> None:
    """This run's student as a star and its ONNX variants as diamonds, each variant off the frontier labelled (the
    frontier's points are labelled already)."""
    for column, marker, size, label, labelled in THIS_RUN_MARKS:
        marked = points[points[column]]
        if marked.empty:
            continue
        axes.scatter(
            marked["speed_ratio"],
            marked["sts_spearman"],
            s=size,
            marker=marker,
            color=THIS_RUN_COLOUR,
            edgecolors="black",
            zorder=3,
            label=label,
        )
        if labelled:
            for row in marked[~marked["pareto"]].itertuples():
                axes.annotate(
                    row.label,
                    (row.speed_ratio, row.sts_spearman),
                    xytext=(6, -12),
                    textcoords="offset points",
                    fontsize="small",
                )


def frontier(points: pd.DataFrame, split: str) -> Drawing:
    """STS Spearman against speed ratio (log scale: twice as fast is one step wherever it starts) of every run and
    the teacher; the Pareto-optimal ones joined by the frontier line and labelled, this run a star.

    ``points`` has one row a point, slowest first: ``speed_ratio``, ``sts_spearman``, ``pareto``, ``this_run`` and
    ``exported`` (booleans: this run's student, and its ONNX variants) and ``label``. One point alone has no
    frontier to show, so is said in words.
    """
    if len(points) < MIN_CURVE_POINTS:
        return Drawing(
            None, (f"Fewer than two models have an STS Spearman on {split} and a speed: no frontier to draw.",)
        )
    figure = Figure(figsize=(WIDTH_INCHES, 5.0), dpi=DPI, layout="constrained")
    axes = figure.subplots()
    optimal, dominated = points[points["pareto"]], points[~points["pareto"]]
    if not dominated.empty:
        axes.scatter(
            dominated["speed_ratio"],
            dominated["sts_spearman"],
            s=36,
            color=DOMINATED_COLOUR,
            label=f"dominated ({len(dominated)})",
        )
    axes.plot(
        optimal["speed_ratio"],
        optimal["sts_spearman"],
        "o--",
        color=FRONTIER_COLOUR,
        label=f"Pareto frontier ({len(optimal)})",
    )
    for row in optimal.itertuples():
        axes.annotate(
            row.label, (row.speed_ratio, row.sts_spearman), xytext=(6, 6), textcoords="offset points", fontsize="small"
        )
    mark_this_run(axes, points)
    axes.set_xscale("log")
    axes.margins(FRONTIER_MARGIN)  # room for the labels of the points at the edges
    axes.xaxis.set_major_locator(LogLocator(subs=SPEED_TICKS))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda ratio, _: f"{ratio:g}×"))
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set(
        title=f"Quality against speed: STS Spearman on {split}",
        xlabel="speed: sentences per second ÷ the teacher's (log scale)",
        ylabel="STS Spearman",
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="best")
    return Drawing(png(figure), ())


def length_bins(edges: list[int]) -> list[str]:
    """``[16, 32, 64]`` -> ``["≤16", "17–32", "33–64", ">64"]``: the bins of a length histogram as labels."""
    lows = [0, *edges]
    return [
        f"≤{edges[0]}",
        *(f"{low + 1}–{high}" for low, high in zip(lows[1:], edges[1:], strict=False)),
        f">{edges[-1]}",
    ]


def text_lengths(stats: dict, max_length: int) -> Drawing:
    """Texts by length in tokens before chunking, a panel per split with ``max_length`` marked, and one more panel of
    texts by their number of chunks for the splits that were cut."""
    splits = {name: split for name, split in stats.items() if split.get("sentences")}
    if not splits:
        return Drawing(None, ("No split has a text: no length histogram to draw.",))
    cut = {name: split for name, split in splits.items() if split.get("chunked_sentences")}
    figure, panels = panel_grid(len(splits) + bool(cut), 2.8)
    for axes, (name, split) in zip(panels, splits.items(), strict=False):
        histogram = split["text_length"]
        labels = length_bins(histogram["edges"])
        axes.bar(range(len(labels)), histogram["counts"], color="#2a6f97")
        if max_length in histogram["edges"]:
            axes.axvline(histogram["edges"].index(max_length) + 0.5, color="#e76f51", linestyle="--")
        axes.set_xticks(range(len(labels)), labels, rotation=45, fontsize="small")
        axes.set(title=f"{name} ({split['sentences']:,} texts)", xlabel="tokens", ylabel="texts")
        axes.grid(alpha=0.3, axis="y")
    if cut:
        axes = panels[-1]
        for name, split in cut.items():
            chunks, counts = np.array(split["chunks_per_text"]["chunks"]), np.array(split["chunks_per_text"]["counts"])
            used = counts > 0
            axes.plot(chunks[used], counts[used], marker="o", label=name)
        axes.set(title="texts by chunks", xlabel="chunks per text", ylabel="texts", yscale="log")
        axes.legend(fontsize="small")
        axes.grid(alpha=0.3)
    return Drawing(png(figure))
