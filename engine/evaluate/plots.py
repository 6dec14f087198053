"""Metric plots: PR / F1 / P / R curves, the confusion matrix and the per-epoch results grid.

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas directly, so no
GUI backend is selected, pyplot's global state is untouched and only matplotlib's bundled font is used.
"""
from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from engine.evaluate.metrics import CONFIDENCE_POINTS, RECALL_POINTS, APResult

logger = logging.getLogger(__name__)

# Beyond this many classes a legend hides the plot, so per-class lines are drawn unlabelled
MAX_LEGEND_CLASSES = 20


def _save(figure: Figure, save_path: str | Path) -> Path:
    save_path = Path(save_path)
    save_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(save_path, dpi=200)
    logger.debug("saved %s", save_path)
    return save_path


def _class_labels(names: Sequence[str], class_ids: Sequence[int] | None, count: int) -> list[str]:
    ids = range(count) if class_ids is None else class_ids
    return [names[int(i)] if int(i) < len(names) else str(int(i)) for i in ids]


def plot_pr_curve(
    recall_points: np.ndarray,
    pr_curves: np.ndarray,
    ap50: np.ndarray,
    names: Sequence[str],
    save_path: str | Path,
    class_ids: Sequence[int] | None = None,
) -> Path:
    """Precision-recall curves at IoU 0.5 (one per class, row k is class ``class_ids[k]``) and their mean."""
    pr_curves = np.atleast_2d(pr_curves)
    labels = _class_labels(names, class_ids, len(pr_curves))
    figure = Figure(figsize=(9, 6), tight_layout=True)
    axes = figure.add_subplot()
    show_legend_per_class = len(pr_curves) <= MAX_LEGEND_CLASSES
    for label, curve, ap in zip(labels, pr_curves, ap50):
        axes.plot(recall_points, curve, linewidth=1, label=f"{label} {ap:.3f}" if show_legend_per_class else None,
                  color=None if show_legend_per_class else "grey")
    if len(pr_curves):
        axes.plot(recall_points, pr_curves.mean(axis=0), linewidth=3, color="blue",
                  label=f"all classes {np.mean(ap50):.3f} mAP@0.5")
        axes.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    axes.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.01), title="Precision-Recall Curve")
    return _save(figure, save_path)


def plot_confidence_curve(
    confidence: np.ndarray,
    curves: np.ndarray,
    names: Sequence[str],
    save_path: str | Path,
    ylabel: str,
    class_ids: Sequence[int] | None = None,
) -> Path:
    """A metric against the confidence threshold, per class and the class mean (its maximum in the legend)."""
    curves = np.atleast_2d(curves)
    labels = _class_labels(names, class_ids, len(curves))
    figure = Figure(figsize=(9, 6), tight_layout=True)
    axes = figure.add_subplot()
    show_legend_per_class = len(curves) <= MAX_LEGEND_CLASSES
    for label, curve in zip(labels, curves):
        axes.plot(confidence, curve, linewidth=1, label=label if show_legend_per_class else None,
                  color=None if show_legend_per_class else "grey")
    if len(curves):
        mean = curves.mean(axis=0)
        best = int(mean.argmax())
        axes.plot(confidence, mean, linewidth=3, color="blue",
                  label=f"all classes {mean[best]:.2f} at {confidence[best]:.3f}")
        axes.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    axes.set(xlabel="Confidence", ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.01), title=f"{ylabel}-Confidence Curve")
    return _save(figure, save_path)


def plot_f1_curve(
    confidence: np.ndarray, f1_curves: np.ndarray, names: Sequence[str], save_path: str | Path,
    class_ids: Sequence[int] | None = None,
) -> Path:
    """F1 against the confidence threshold."""
    return plot_confidence_curve(confidence, f1_curves, names, save_path, "F1", class_ids)


def plot_detection_curves(result: APResult, names: Sequence[str], save_dir: str | Path) -> list[Path]:
    """Write PR_curve.png, F1_curve.png, P_curve.png and R_curve.png for an :class:`APResult`."""
    save_dir = Path(save_dir)
    class_ids = result.classes
    return [
        plot_pr_curve(RECALL_POINTS, result.pr_curve, result.ap50, names, save_dir / "PR_curve.png", class_ids),
        plot_f1_curve(CONFIDENCE_POINTS, result.f1_curve, names, save_dir / "F1_curve.png", class_ids),
        plot_confidence_curve(CONFIDENCE_POINTS, result.precision_curve, names, save_dir / "P_curve.png",
                              "Precision", class_ids),
        plot_confidence_curve(CONFIDENCE_POINTS, result.recall_curve, names, save_dir / "R_curve.png",
                              "Recall", class_ids),
    ]


def plot_confusion_matrix(
    matrix: np.ndarray, names: Sequence[str], save_path: str | Path, normalize: bool = True
) -> Path:
    """Heat map of a (nc + 1, nc + 1) ``matrix[predicted, true]``; returns the path.

    With ``normalize`` each true-class column (background included) is divided by its sum.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    num_classes = len(names)
    if matrix.shape != (num_classes + 1, num_classes + 1):
        raise ValueError(
            f"plot_confusion_matrix: matrix shape {matrix.shape} does not fit {num_classes} names plus background"
        )
    if normalize:
        matrix = matrix / np.maximum(matrix.sum(axis=0, keepdims=True), 1e-9)
    labels = [*names, "background"]
    annotate = num_classes < 30
    size = max(6.0, 0.4 * (num_classes + 1) + 3)
    figure = Figure(figsize=(size * 1.1, size), tight_layout=True)
    axes = figure.add_subplot()
    image = axes.imshow(np.where(matrix > 0, matrix, np.nan), cmap="Blues", vmin=0.0,
                        vmax=1.0 if normalize else None)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    if annotate:
        threshold = np.nanmax(matrix) / 2 if matrix.any() else 0
        for row in range(matrix.shape[0]):
            for column in range(matrix.shape[1]):
                value = matrix[row, column]
                if value > 0:
                    text = f"{value:.2f}" if normalize else f"{int(value)}"
                    axes.text(column, row, text, ha="center", va="center", fontsize=8,
                              color="white" if value > threshold else "black")
    ticks = np.arange(num_classes + 1)
    tick_labels = labels if num_classes < 100 else []
    axes.set_xticks(ticks if tick_labels else [], tick_labels, rotation=90)
    axes.set_yticks(ticks if tick_labels else [], tick_labels)
    axes.set(xlabel="True", ylabel="Predicted",
             title="Confusion Matrix" + (" (normalised by true class)" if normalize else ""))
    return _save(figure, save_path)


def _read_results_csv(csv_path: Path) -> tuple[list[str], np.ndarray]:
    """Header names (spaces stripped) and a float table; errors name the file, line and column."""
    if not csv_path.is_file():
        raise FileNotFoundError(f"results file not found: {csv_path}")
    with csv_path.open(newline="") as file:
        rows = list(csv.reader(file))
    rows = [(number, row) for number, row in enumerate(rows, start=1) if any(cell.strip() for cell in row)]
    if len(rows) < 2:
        raise ValueError(f"{csv_path}: needs a header line and at least one row of values")
    header = [name.strip() for name in rows[0][1]]
    table = []
    for line_number, row in rows[1:]:
        if len(row) != len(header):
            raise ValueError(f"{csv_path}: line {line_number} has {len(row)} fields, the header has {len(header)}")
        values = []
        for name, cell in zip(header, row):
            try:
                values.append(float(cell))
            except ValueError:
                raise ValueError(
                    f"{csv_path}: line {line_number}, column '{name}': '{cell.strip()}' is not a number"
                ) from None
        table.append(values)
    return header, np.asarray(table)


def plot_results_csv(csv_path: str | Path, save_path: str | Path | None = None) -> Path:
    """Plot every per-epoch column of a results.csv in a grid against the ``epoch`` column.

    The grid holds whatever the trainer logged (losses, precision, recall, mAP50, mAP50-95, learning rates)
    in file order. Writes ``results.png`` next to the CSV unless ``save_path`` is given.
    """
    csv_path = Path(csv_path)
    header, table = _read_results_csv(csv_path)
    if "epoch" in header:
        epoch_column = header.index("epoch")
        epochs = table[:, epoch_column]
    else:
        epoch_column = None
        epochs = np.arange(len(table), dtype=float)
    columns = [index for index in range(len(header)) if index != epoch_column]
    if not columns:
        raise ValueError(f"{csv_path}: no metric columns besides 'epoch'")

    num_columns = min(5, len(columns))
    num_rows = math.ceil(len(columns) / num_columns)
    figure = Figure(figsize=(3.2 * num_columns, 2.8 * num_rows), tight_layout=True)
    for plot_index, column in enumerate(columns, start=1):
        axes = figure.add_subplot(num_rows, num_columns, plot_index)
        axes.plot(epochs, table[:, column], marker=".", linewidth=1.5, markersize=6)
        axes.set_title(header[column], fontsize=10)
        axes.set_xlabel("epoch", fontsize=8)
        axes.tick_params(labelsize=8)
    return _save(figure, csv_path.with_name("results.png") if save_path is None else save_path)
