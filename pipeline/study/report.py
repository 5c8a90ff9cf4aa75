"""The comparison report as markdown: the groups over their seeds, each verdict with its
evidence (intervals, raw and Holm-adjusted p, affinity, diversity, cost), the per-class
effects and notes on what limits the evidence. Pure text from the report's dict
(`compare.run` builds it), so it can be checked line by line.
"""

from __future__ import annotations

import math
import textwrap

from pipeline.study.decisions import CONVERGE_ADVICE, SEEDS_ADVISED
from pipeline.study.seed_statistics import MOST_SEEDS_ADVISED


def _points(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value * 100:+.2f}"


def _percent(mean: float, std: float, n: int) -> str:
    if n == 0 or math.isnan(mean):
        return "-"
    return f"{mean * 100:.2f}" + ("" if math.isnan(std) else f" ± {std * 100:.2f}")


def _interval(low: float | None, high: float | None) -> str:
    return "-" if low is None else f"[{_points(low)}, {_points(high)}]"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _p(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"


def _difference_rows(differences: list[dict]) -> list[str]:
    rows = []
    for d in differences:
        wins = "-" if d["probability_of_improvement"] is None else f"{d['probability_of_improvement']:.2f}"
        seeds = (
            "-"
            if d["low"] is None
            else " / ".join(
                str(n) if n else f">{MOST_SEEDS_ADVISED}" for n in (d["seeds_needed"], d["seeds_needed_1pt"])
            )
        )
        level = "" if d["verdict_confidence"] is None else f" at {d['verdict_confidence']:.1%}"
        rows.append(
            f"| {d['group']} | {d['baseline']} | {_points(d['mean'])} | {_interval(d['t_low'], d['t_high'])} "
            f"| {_interval(d['bootstrap_low'], d['bootstrap_high'])} | {_p(d['t_p_value'])} "
            f"| {_p(d['p_adjusted'])} | {_interval(d['low'], d['high'])}{level} | {_p(d['p_value'])} | {wins} "
            f"| {_ratio(d['affinity'])} | {_ratio(d['diversity'])} | {_ratio(d['cost'])} | {seeds} "
            f"| {d['method']} | **{d['verdict']}**: {d['reason']} |"
        )
    return rows


DIFFERENCE_HEADER = [
    "| {what} | vs | difference | t interval | bootstrap interval | t-test p | Holm p "
    "| verdict interval | sign-flip p | P(better) | affinity | diversity | cost "
    "| seeds to resolve it / 1 point | method | verdict |",
    "|---" * 16 + "|",
]


def class_table(differences: list[dict]) -> list[str]:
    """Classes x comparisons: mean difference of test recall in points with its (Holm-corrected over
    the classes) interval, bold where the interval excludes 0."""
    shown = [d for d in differences if d["per_class"]]
    if not shown:
        return []
    classes = sorted({name for d in shown for name in d["per_class"]})
    lines = [
        "| class | " + " | ".join(f"{d['group']} vs {d['baseline']}" for d in shown) + " |",
        "|---" * (len(shown) + 1) + "|",
    ]
    for name in classes:
        cells = []
        for d in shown:
            c = d["per_class"].get(name)
            if c is None:
                cells.append("-")
                continue
            mean = f"**{_points(c['mean'])}**" if c["significant"] else _points(c["mean"])
            if c["p_adjusted"] is None:  # no spread: the same difference on every seed, nothing to test
                cells.append(f"{mean} (every seed alike)")
            else:
                cells.append(f"{mean} [{_points(c['low'])}, {_points(c['high'])}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def class_method(differences: list[dict]) -> str:
    """How the per-class intervals were made (verdicts.class_differences), in a sentence."""
    methods = {c.get("method", "per seed") for d in differences for c in d["per_class"].values()}
    per_image = (
        "each test image of the class on each seed is a pair (right or wrong with the group, with the baseline); the "
        "interval is over the images x seeds table, so it holds for other seeds and other images of the class"
    )
    per_seed = (
        "from each seed's class recall (a t interval over the seeds: runs evaluated before predictions were logged)"
    )
    said = [text for method, text in (("per image", per_image), ("per seed", per_seed)) if method in methods]
    return "Method: " + "; where not, ".join(said) + " (pipeline/study/verdicts.py, class_differences)."


def render_markdown(report: dict) -> str:
    """The report as markdown: groups (accuracy in %, mean ± std over seeds), the verdicts
    against the baseline, each ablated operation's contribution, the per-class effects and
    notes on the evidence."""
    lines = [
        f"# Augmentation comparison: experiment `{report['experiment']}`",
        "",
        f"{report['runs']} finished runs"
        + (f" ({report['runs_left_out']} failed/killed/running runs left out)" if report["runs_left_out"] else "")
        + (f", filter `{report['filter']}`" if report["filter"] else "")
        + ".",
        "",
        "| group | runs | seeds | best val accuracy % | test accuracy % | test balanced accuracy % | epochs to best "
        "| not converged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for g in report["groups"]:
        epochs = "-" if math.isnan(g["best_epoch_mean"]) else f"{g['best_epoch_mean']:.1f}"
        lines.append(
            f"| {g['group']} | {g['runs']} | {g['seeds']} "
            f"| {_percent(g['best_val_accuracy_mean'], g['best_val_accuracy_std'], g['best_val_accuracy_n'])} "
            f"| {_percent(g['test_accuracy_mean'], g['test_accuracy_std'], g['test_accuracy_n'])} "
            f"| {_percent(*(g[f'test_balanced_accuracy_{k}'] for k in ('mean', 'std', 'n')))} "
            f"| {epochs} | {g['not_converged']} of {g['runs']} |"
        )
    lines += [
        "",
        f"## Against `{report['baseline']}`: {report['metric']}, difference in points, "
        f"{report['confidence']:.0%} intervals",
        "",
        *[h.format(what="group") for h in DIFFERENCE_HEADER],
    ]
    lines += _difference_rows(report["differences"])
    if not report["differences"]:
        lines.append(f"| (no group to compare with `{report['baseline']}`) |" + " |" * 15)
    if report["ablations"]:
        lines += [
            "",
            f"## Which operation helps: the full preset minus the preset without it, {report['metric']}",
            "",
            *[h.format(what="operation") for h in DIFFERENCE_HEADER],
        ]
        lines += _difference_rows(report["ablations"])
    if report.get("tta"):
        lines += [
            "",
            f"## Test-time augmentation: each group's runs with it minus the same runs without, {report['metric']}",
            "",
            *[h.format(what="group with TTA") for h in DIFFERENCE_HEADER],
        ]
        lines += _difference_rows(report["tta"])
    lines += [
        "",
        f"Verdicts (keep, drop, equivalent within +-{report['margin']:g} points, inconclusive, not converged): "
        "each verdict's reason says why; the rule is written out in pipeline/study/decisions.py and "
        "docs/guide.md (Reading the comparison). "
        "The sign-flip p (exact, no normality assumed) is shown but not corrected: it cannot go below "
        "2/2^n (0.0625 at 5 seeds). P(better): the share of seeds on which the group beats the baseline. "
        "affinity: the baseline models' val accuracy on images augmented by it alone / on clean images; "
        "diversity: final training loss with it / without; cost: a run's training time with it / without. "
        "Seeds to resolve it: seeds per group for a corrected verdict on this difference, and on a "
        f"1-point one, with {report['power']:.0%} power given the spread seen. An ablation's keep means "
        "the operation helps its preset.",
        *(
            [
                "",
                f"A sequential study (compare.rounds={report['rounds']}): each comparison is decided at the first "
                f"round where it settled, at that round's share of the {1 - report['confidence']:.2f} false-verdict "
                "rate (Pocock-type alpha spending; pipeline/study/sequential.py), so looking after every round does not "
                "inflate false verdicts; its reason names the round.",
            ]
            if report.get("rounds")
            else []
        ),
        "",
    ]
    per_class = class_table(report["differences"] + report["ablations"] + report.get("tta", []))
    if per_class:
        lines += [
            "## Per class: test recall, difference in points [interval, Holm-corrected over the classes; bold: it excludes 0]",
            "",
            *per_class,
            "",
            class_method(report["differences"] + report["ablations"] + report.get("tta", [])),
            "",
        ]
        lines += [f"- {flag}" for flag in report["class_flags"]] or [
            "- no class moves significantly against the average"
        ]
        lines.append("")
    lines += [f"- {note}" for note in evidence_notes(report) + report["notes"]]
    return "\n".join(lines) + "\n"


def evidence_notes(report: dict) -> list[str]:
    """What limits the evidence: repeated runs left out, runs still improving, too few seeds."""
    notes = []
    if report["repeats_dropped"]:
        notes.append(
            f"{report['repeats_dropped']} repeated run(s) of a seed already counted were left out "
            "(the latest FINISHED run of each group and seed is used)."
        )
    for g in report["groups"]:
        if g["not_converged"]:
            advice = CONVERGE_ADVICE[g["annealed"]] + ("" if g["annealed"] else " (train.resume=true continues them)")
            notes.append(
                f"{g['group']}: {g['not_converged']} of {g['runs']} runs had their best epoch within their "
                f"last train.patience epochs, so they may still have been improving: {advice} for a verdict "
                "at convergence."
            )
    for d in report["differences"] + report["ablations"]:
        if d.get("other_splits"):
            notes.append(
                f"{d['group']} vs {d['baseline']}: seed(s) {', '.join(d['other_splits'])} left out, their two runs "
                "trained on different train/val sets (tag train_val_sha256): pairs stay within one split."
            )
    few = [g["group"] for g in report["groups"] if g["runs"] < SEEDS_ADVISED]
    if few:
        notes.append(
            f"fewer than {SEEDS_ADVISED} seeds in {', '.join(few)}: use at least {SEEDS_ADVISED} "
            f"(seed=1,2,3,4,5); fewer give wide intervals, and below 3 there is no verdict at all."
        )
    return notes


def json_safe(value):
    """NaN -> null, so the JSON is standard."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def short_label(label: str) -> str:
    """A group's label for the terminal: each varied setting by the last part of its key, or the last two
    where one is too short to say what it is (`lesson, data.split.train_val_per_seed=True` -> `lesson,
    train_val_per_seed=True`; `model.name` stays). The "vs" column names the baseline's preset alone, its
    settings being the group's."""
    preset, *settings = label.split(", ")
    shown = []
    for setting in settings:
        key, _, value = setting.partition("=")
        parts = key.split(".")
        shown.append(".".join(parts[-1:] if len(parts[-1]) >= 8 else parts[-2:]) + f"={value}")
    return ", ".join([preset, *shown])


def _fitted(cell: str, width: int) -> str:
    """`cell` in `width` characters: a longer one loses its middle, so that the settings at its end that
    tell two groups apart stay in sight."""
    if len(cell) <= width:
        return cell
    tail = (width - 1) // 2
    return cell[: width - 1 - tail] + "…" + cell[len(cell) - tail :]


def terminal_summary(report: dict, width: int = 100) -> str:
    """What `compare` prints first: one row per group and per ablated operation (its metric in %, the
    difference from its baseline in points, the interval the verdict reads, the verdict), sized to
    `width` columns, what they mean, the classes that move against the average and the notes on the
    evidence. The full table, with every statistic, is comparison.md; `verdict_lines` end the output."""
    metric = report["metric"]
    compared = {d["group"]: d for d in report["differences"]}
    rows = [("group", f"{metric} %", "vs", "points", "interval", "verdict")]
    for g in report["groups"]:
        d = compared.get(g["group"])
        mean = _percent(g[f"{metric}_mean"], g[f"{metric}_std"], g[f"{metric}_n"])
        rows.append(
            (
                short_label(g["group"]),
                mean,
                *(
                    (d["baseline"].split(", ")[0], _points(d["mean"]), _interval(d["low"], d["high"]), d["verdict"])
                    if d
                    else ("",) * 4
                ),
            )
        )
    for d in report["ablations"]:
        rows.append(
            (
                f"{d['group']} (in {d['baseline'].split('-no-')[0]})",
                "",
                "without it",
                _points(d["mean"]),
                _interval(d["low"], d["high"]),
                d["verdict"],
            )
        )
    for d in report.get("tta", []):
        row = (
            short_label(d["group"]),
            "",
            d["baseline"].split(", ")[0],
            _points(d["mean"]),
            _interval(d["low"], d["high"]),
        )
        rows.append((*row, d["verdict"]))
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    widths[0] = max(12, min(widths[0], width - sum(widths[1:]) - 10))  # the names give way first
    lines = []
    for row in (rows[0], tuple("-" * w for w in widths), *rows[1:]):
        lines.append("  ".join(_fitted(cell, widths[i]).ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    legend = (
        f"points: percentage points of {metric} (the group minus its baseline; an operation: its preset with "
        "it minus without it); [low, high]: the interval the verdict reads, corrected over every comparison "
        "here; ± is the standard deviation over seeds."
    )
    said = [f"warning: {flag}" for flag in report["class_flags"]] + [f"note: {note}" for note in report["notes"]]
    return "\n".join(
        [
            *(line[:width] for line in lines),
            *textwrap.wrap(legend, width),
            *(line for text in said for line in textwrap.wrap(text, width, subsequent_indent="  ")),
        ]
    )


def verdict_lines(report: dict, width: int = 100) -> list[str]:
    """One line per comparison, what `compare` ends with: `lesson vs none: DROP -5.70 points [-7.04, -4.36],
    5 seeds` (an operation: `vertical_flip in lesson: ...`); without an interval, why, shortened to `width`."""
    lines = []
    for d in report["differences"] + report["ablations"] + report.get("tta", []):
        operation = d in report["ablations"]
        what = f"{d['group']} in {d['baseline'].split('-no-')[0]}" if operation else f"{d['group']} vs {d['baseline']}"
        line = f"{what}: {d['verdict'].upper()} "
        if d["low"] is not None:
            seeds = len(d["per_seed"]) if d["per_seed"] else min(d["n_group"], d["n_baseline"])
            line += f"{_points(d['mean'])} points {_interval(d['low'], d['high'])}, {seeds} seeds"
        else:
            line += textwrap.shorten(d["reason"], max(20, width - len(line)), placeholder=" ...")
        lines.append(line)
    return lines
