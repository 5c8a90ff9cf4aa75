"""The comparison's figures: curves with bands over seeds and every seed's difference with the
intervals (comparison.png), the per-class effects (class_effects.png) and each preset and operation
by affinity and diversity (affinity_diversity.png). matplotlib, no display."""

from __future__ import annotations

from pathlib import Path

import matplotlib.ticker
import numpy as np
from matplotlib.transforms import Bbox

from pipeline.config.augmentation import read_ablation_label
from pipeline.study.records import TTA_MARK, Difference, Group, RunSummary
from pipeline.visuals import plt, save, wrapped


def mean_curve(runs: list[RunSummary], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(epochs, mean, std, runs) of a per-epoch metric over the runs: `runs` counts those that
    reached each epoch (early stopping ends them at different epochs), and the mean of the
    later epochs is over those alone."""
    curves = [r.curves[metric] for r in runs if r.curves.get(metric)]
    if not curves:
        return np.array([]), np.array([]), np.array([]), np.array([], int)
    length = max(len(c) for c in curves)
    padded = np.full((len(curves), length), np.nan)
    for i, c in enumerate(curves):
        padded[i, : len(c)] = c
    mean = np.nanmean(padded, axis=0)
    std = np.array([np.std(col[~np.isnan(col)], ddof=1) if np.sum(~np.isnan(col)) > 1 else 0.0 for col in padded.T])
    return np.arange(1, length + 1), mean, std, np.sum(~np.isnan(padded), axis=0)


def is_ablation(label: str) -> bool:
    """Whether a group's label (`<preset>[, key=value ...]`) names a preset without one operation."""
    return read_ablation_label(label.split(", ")[0])[1] is not None


def group_styles(groups: list[Group], differences: list[Difference]) -> list[tuple[str, str, str]]:
    """(colour, line style, marker) per group: the baseline black, each full preset solid in a colour
    of its own, the preset without one operation (an ablation) dashed with crosses - so that a
    preset and its ablations read as one family and the baseline stands apart."""
    # a TTA arm's baseline is its own group evaluated plainly: no baseline of the study
    baselines = {d.baseline for d in differences if not is_ablation(d.baseline) and TTA_MARK not in d.group}
    colours = iter(plt.get_cmap("tab10").colors)
    styles = []
    for group in groups:
        if group.preset in baselines or group.label in baselines:
            styles.append(("black", "-", "o"))
        elif group.runs and group.runs[0].ablated:
            styles.append((next(colours, "gray"), "--", "x"))
        else:
            styles.append((next(colours, "gray"), "-", "o"))
    return styles


def comparison_figure(groups: list[Group], differences: list[Difference], target: Path) -> Path:
    """Validation accuracy and loss per epoch (mean line, band = +/- 1 std over seeds), one
    colour per group; and each difference (from the baseline, or an ablated operation's
    contribution) with its interval, its mean and every seed's own difference as a dot."""
    return save(draw_comparison(groups, differences), target)


def draw_comparison(groups: list[Group], differences: list[Difference]):
    """The figure of `comparison_figure`, not yet laid out or saved; taller when the differences'
    labels need more lines than 4.6 inches hold."""
    labels = [wrapped(f"{d.group} vs {d.baseline}", 36) for d in differences]
    lines = sum(label.count("\n") + 1 for label in labels)
    figure, axes = plt.subplots(
        1, 3, figsize=(16, max(4.6, 1.6 + 0.15 * lines)), gridspec_kw={"width_ratios": [1, 1, 0.9]}
    )
    for group, (colour, linestyle, marker) in zip(groups, group_styles(groups, differences)):
        for ax, metric in zip(axes[:2], ("val_accuracy", "val_loss")):
            epochs, mean, std, reached = mean_curve(group.runs, metric)
            if not len(epochs):
                continue
            every = reached == reached.max()  # epochs every run of the group reached: drawn, with its band
            last = int(np.flatnonzero(every).max()) + 1
            ax.plot(
                epochs[:last],
                mean[:last],
                color=colour,
                linestyle=linestyle,
                marker=marker,
                markersize=3,
                label=wrapped(f"{group.label} (n={len(group.runs)})", 40),
            )
            ax.fill_between(epochs[:last], (mean - std)[:last], (mean + std)[:last], color=colour, alpha=0.15)
            if last < len(epochs):  # after the first run stopped: the runs still going, thin and dotted
                ax.plot(epochs[last - 1 :], mean[last - 1 :], color=colour, linestyle=":", linewidth=1)
    for ax, metric, unit in zip(axes[:2], ("val_accuracy", "val_loss"), ("fraction", "cross-entropy")):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{metric.replace('_', ' ')} ({unit})")
        ax.set_title(f"{metric.replace('val_', 'validation ').replace('_', ' ')} per epoch", fontsize=10)
        ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:  # runs without recorded curves draw none
        axes[0].legend(fontsize=8)

    forest = axes[2]
    for row, d in enumerate(differences):
        colour = VERDICT_COLOURS.get(d.verdict, "tab:gray")
        forest.annotate(  # the verdict, as a label beside its row
            d.verdict,
            xy=(1.02, row),
            xycoords=("axes fraction", "data"),
            va="center",
            fontsize=12,
            fontweight="bold",
            color="white",
            bbox={"boxstyle": "round,pad=0.3", "facecolor": colour, "edgecolor": "none"},
        )
        if d.low is not None:
            forest.plot([d.low * 100, d.high * 100], [row, row], color=colour, linewidth=3, alpha=0.6)
        if not np.isnan(d.mean):
            forest.plot(d.mean * 100, row, "D", color=colour, markersize=7)
        seeds = np.array(list(d.per_seed.values())) * 100
        forest.plot(
            seeds,
            row + np.linspace(-0.22, 0.22, len(seeds)) if len(seeds) > 1 else [row] * len(seeds),
            "o",
            color="black",
            markersize=3.5,
            alpha=0.7,
        )
    forest.axvline(0, color="black", linewidth=1)
    operations = [row for row, d in enumerate(differences) if is_ablation(d.baseline)]
    sections = bool(operations) and operations[0] > 0  # presets against the baseline above, operations below
    if sections:
        forest.axhline(operations[0] - 0.5, color="gray", linewidth=1, linestyle="--")
        for y, text in ((-0.75, "presets vs the baseline"), (operations[0] - 0.5, "operations: their contribution")):
            forest.annotate(
                text,
                xy=(0.99, y),
                xycoords=("axes fraction", "data"),
                ha="right",
                va="center",
                fontsize=8,
                color="dimgray",
                bbox={"boxstyle": "square,pad=0.15", "facecolor": "white", "edgecolor": "none"},
            )
    forest.set_yticks(range(len(differences)), labels, fontsize=8)
    forest.set_ylim(-1.1 if sections else -0.7, max(len(differences), 1) - 0.3)
    forest.invert_yaxis()
    metric = differences[0].metric if differences else "accuracy"
    forest.set_xlabel(f"{metric} minus baseline (points)")
    forest.set_title("difference: interval,\nmean (diamond), each seed (dots)", fontsize=10)
    forest.grid(alpha=0.3, axis="x")
    seeds = sorted({r.seed for g in groups for r in g.runs}, key=lambda seed: (len(seed), seed))
    names = ", ".join(g.label for g in groups[:6]) + (f" and {len(groups) - 6} more" if len(groups) > 6 else "")
    figure.suptitle(
        wrapped(
            f"Does it help? {names}: {sum(len(g.runs) for g in groups)} runs, seeds {','.join(seeds)}\n"
            f"curves: mean over seeds, band +-1 std, dotted once a run has stopped; right: the verdict on {metric}",
            130,
        ),
        fontsize=12,
    )
    return figure


VERDICT_COLOURS = {"keep": "tab:green", "drop": "tab:red", "equivalent": "tab:blue", "not converged": "tab:orange"}


def class_effects_figure(differences: list[Difference], target: Path) -> Path:
    return save(draw_class_effects(differences), target)


def draw_class_effects(differences: list[Difference]):
    """Classes x comparisons: colour = the paired difference of test recall (points), a black
    frame where its Holm-corrected interval excludes 0. Empty comparisons are left out."""
    shown = [d for d in differences if d.per_class]
    classes = sorted({name for d in shown for name in d.per_class})
    values = np.full((len(classes), len(shown)), np.nan)
    for j, d in enumerate(shown):
        for i, name in enumerate(classes):
            if name in d.per_class:
                values[i, j] = d.per_class[name]["mean"] * 100
    figure, ax = plt.subplots(figsize=(max(5.0, 2.4 + 1.1 * len(shown)), 1.4 + 0.42 * max(len(classes), 1)))
    if not shown:
        ax.text(
            0.5,
            0.5,
            "no per-class test recall (run the evaluate stage;\ntrain.test_in_sweeps=true in sweeps)",
            ha="center",
            va="center",
            transform=ax.transAxes,
            fontsize=9,
        )
        ax.set_axis_off()
        return figure
    limit = max(float(np.nanmax(np.abs(values))) if values.size and not np.all(np.isnan(values)) else 1.0, 1.0)
    significant = np.array(
        [[bool(d.per_class.get(name, {}).get("significant")) for d in shown] for name in classes], dtype=bool
    )
    ax.imshow(np.where(np.isnan(values), np.nan, 0.0), cmap="Greys", vmin=-1, vmax=8, aspect="auto")  # light grey
    image = ax.imshow(np.where(significant, values, np.nan), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    for j, d in enumerate(shown):
        for i, name in enumerate(classes):
            c = d.per_class.get(name)
            if c is None:
                continue
            dark = c["significant"] and abs(c["mean"] * 100) > 0.6 * limit
            ax.text(
                j,
                i,
                f"{c['mean'] * 100:+.1f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if dark else "black",
            )
            if c["significant"]:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
    ax.set_xticks(
        range(len(shown)), [wrapped(f"{d.group}\nvs {d.baseline}") for d in shown], fontsize=8, rotation=30, ha="right"
    )
    ax.set_yticks(range(len(classes)), classes, fontsize=9)
    figure.colorbar(image, ax=ax, label="test recall difference (points)")
    framed = sum(c["significant"] for d in shown for c in d.per_class.values())
    ax.set_title(
        "Per-class effect on test recall (points)\n"
        + (
            f"coloured and framed: the {framed} cell(s) whose Holm-corrected interval excludes 0; grey: not significant"
            if framed
            else "grey: no cell's Holm-corrected interval excludes 0 (the numbers are the means)"
        ),
        fontsize=10,
    )
    return figure


def affinity_diversity_figure(differences: list[Difference], ablations: list[Difference], target: Path) -> Path:
    figure = draw_affinity_diversity(differences, ablations)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=90)  # not `save`: its tight_layout cannot place a colorbar shared by panels
    plt.close(figure)
    return target


def draw_affinity_diversity(differences: list[Difference], ablations: list[Difference]):
    """Each preset (against the baseline) and each ablated operation (its contribution to its
    preset) at (affinity, diversity), coloured by the measured difference (points), one panel
    each: Gontijo-Lopes et al. 2020 found gains at high affinity and diversity."""
    panels = [
        (title, [d for d in found if d.affinity is not None and d.diversity is not None and not np.isnan(d.mean)])
        for title, found in (("presets, against the baseline", differences), ("operations, in their preset", ablations))
    ]
    panels = [(title, shown) for title, shown in panels if shown] or [("", [])]
    figure, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.8), squeeze=False, layout="constrained")
    every = [d for _, shown in panels for d in shown]
    limit = max([abs(d.mean * 100) for d in every] + [0.5])
    for ax, (title, shown) in zip(axes[0], panels):
        if shown:
            points = ax.scatter(
                [d.affinity for d in shown],
                [d.diversity for d in shown],
                c=[d.mean * 100 for d in shown],
                cmap="RdYlGn",
                vmin=-limit,
                vmax=limit,
                s=90,
                edgecolors="black",
            )
            ax.scatter([1.0], [1.0], marker="+", s=160, color="black", zorder=0)  # the baseline: its own images
            ax.annotate("baseline (1, 1)", (1.0, 1.0), textcoords="offset points", xytext=(6, -12), fontsize=8)
            ax.margins(x=0.35, y=0.15)  # room for the labels
            ax.set_title(title, fontsize=10)
        else:
            ax.text(
                0.5,
                0.5,
                "no affinity measured (compare.affinity=false, or no baseline models)",
                ha="center",
                va="center",
                transform=ax.transAxes,
                fontsize=9,
            )
        ax.set_xlabel("affinity (baseline models' val accuracy, augmented / clean)")
        ax.set_ylabel("diversity (final training loss, with / without)")
        ax.grid(alpha=0.3)
    if every:
        figure.colorbar(points, ax=list(axes[0]), label=f"{every[0].metric} difference (points)")
    figure.suptitle(
        "Why an augmentation helps or hurts: affinity (how like the data its images stay) and diversity "
        "(how much harder it makes training), Gontijo-Lopes et al. 2020",
        fontsize=10,
    )
    figure.canvas.draw()  # the final axes limits and layout, which label placement measures in
    for ax, (_, shown) in zip(axes[0], panels):
        _label_points(ax, [(d.affinity, d.diversity) for d in shown], [d.group for d in shown])
    return figure


def _label_points(ax, points: list[tuple[float, float]], labels: list[str]) -> None:
    """Name each point beside it - right, left, above or below it, the first place inside the axes
    that overlaps no marker and no label placed before - so points close together, as an ablation's
    operations often are, stay readable and each name stays next to its own point."""
    renderer = ax.figure.canvas.get_renderer()
    radius = 7  # pixels: the markers (s=90) are about 13 across
    markers = ax.transData.transform(points)
    placed = [Bbox.from_bounds(px - radius, py - radius, 2 * radius, 2 * radius) for px, py in markers]
    places = [((7, 2), "left"), ((-7, 2), "right"), ((7, -9), "left"), ((-7, -9), "right"), ((0, 9), "center")]
    places += [((0, -18 - 10 * step), "center") for step in range(len(labels))]  # below, further each time
    for (x, y), label in sorted(zip(points, labels), key=lambda item: -item[0][1]):
        for offset, align in places:
            text = ax.annotate(label, (x, y), textcoords="offset points", xytext=offset, ha=align, fontsize=8)
            text.set_in_layout(False)
            box = text.get_window_extent(renderer)
            inside = ax.bbox.contains(box.x0, box.y0) and ax.bbox.contains(box.x1, box.y1)
            if (inside and not any(box.overlaps(other) for other in placed)) or (offset, align) == places[-1]:
                break  # a free place, or no free place at all: the last one, overlapping
            text.remove()
        placed.append(box)


def search_figure(report: dict, target: Path) -> Path:
    return save(draw_search(report), target)


def draw_search(report: dict):
    """Left, the search: each trial's best val accuracy by trial number, the candidates marked, `none`
    on the search seed as a line. Right, the winner's curse: each candidate's search estimate against its
    confirmed difference on validation (fresh seeds) and on test with its Holm-corrected interval."""
    figure, (trials_ax, curse_ax) = plt.subplots(1, 2, figsize=(11, 1.9 + 0.45 * max(len(report["candidates"]), 3)))
    trials = report["trials"]
    trials_ax.scatter([t["number"] for t in trials], [100 * t["best_val"] for t in trials], s=14, color="0.6")
    for i, c in enumerate(report["candidates"]):  # labels above and below in turn: neighbours stay apart
        trials_ax.scatter([c["trial"]], [100 * c["search_val"]], s=40, color="tab:orange", zorder=3)
        trials_ax.annotate(
            c["name"],
            (c["trial"], 100 * c["search_val"]),
            fontsize=7,
            xytext=(4, 4 - 13 * (i % 2)),
            textcoords="offset points",
        )
    if not np.isnan(report["none_search_val"]):
        trials_ax.axhline(100 * report["none_search_val"], color="tab:blue", linestyle="--", label="none")
        trials_ax.legend(fontsize=8, loc="lower right")
    trials_ax.set(xlabel="trial", ylabel=f"best val accuracy % (seed {report['search_seed']})")
    trials_ax.set_title(f"the search: {len(trials)} trials, the top {len(report['candidates'])} in orange", fontsize=10)

    rows = list(range(len(report["candidates"])))[::-1]
    for row, c in zip(rows, report["candidates"]):
        curse_ax.scatter([100 * c["estimate"]], [row + 0.2], marker="o", facecolors="none", edgecolors="tab:orange")
        curse_ax.scatter([100 * c["confirmed_val"]], [row], marker="s", color="tab:orange")
        if c["low"] is not None:
            curse_ax.plot([100 * c["low"], 100 * c["high"]], [row - 0.2, row - 0.2], color="black")
        curse_ax.scatter([100 * c["confirmed_test"]], [row - 0.2], marker="D", color="black", s=18)
    curse_ax.axvline(0, color="0.5", linewidth=0.8)
    curse_ax.set_yticks(rows, [f"{c['name']}\n{c['verdict']}" for c in report["candidates"]], fontsize=8)
    curse_ax.set_ylim(-0.7, len(rows) - 0.3)
    curse_ax.set_xlabel("points against none")
    seeds = report["confirmation_seeds"]
    curse_ax.set_title(
        f"○ search estimate (1 seed)  ■ confirmed, val  ◆ confirmed, test\n({len(seeds)} fresh seeds; the gap ○-■ is the winner's curse)",
        fontsize=9,
    )
    return figure
