"""The tutorials' written report: one row per trained model, as one HTML page (the page
machinery of :func:`keras_privacy.privacy_report`), with a Markdown companion, PNG plots
and the rows as JSON.

Framework-free (numpy, matplotlib's Agg canvas). A tutorial trains each model at
several target epsilons (and once without DP), possibly with several seeds, collects a
:class:`Row` per run, and calls :func:`write_report`. Rows of the same model and target are
aggregated as mean and sample standard deviation over their seeds:

    mean = (1/n) sum_i v_i,    sd = sqrt( sum_i (v_i - mean)^2 / (n - 1) )   (0 when n = 1)

The plots put the measured epsilon (mean over seeds; it is the same for every seed, as the
accountant sees only public parameters) on a log x axis; the non-private model of the same
kind is a dashed horizontal line, since its epsilon is infinite.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "Row",
    "Summary",
    "chance_auc_halfwidth",
    "html_page",
    "markdown_table",
    "plot_vs_epsilon",
    "png_vs_epsilon",
    "summarize",
    "table_cells",
    "write_report",
]

# Row.accountant of models made private by objective perturbation (no DP-SGD accountant)
OBJECTIVE = "objective perturbation"


@dataclasses.dataclass(frozen=True)
class Row:
    """One trained model and what was measured on it.

    Attributes:
      model: the model's name ("logistic regression", "MLP 30-16-1", ...).
      target_epsilon: the epsilon the noise was planned for; None for non-private training.
      epsilon: the epsilon the accountant reports for the run (inf without DP).
      noise_multiplier: sigma (0 without DP).
      l2_norm_clip: C (None without DP).
      batch_size: expected batch size (Poisson sampling) or the batch size (non-private).
      epochs: passes over the training data.
      learning_rate: the optimizer's learning rate.
      accountant: "pld" or "rdp" ("-" without DP).
      metrics: name -> value measured on held-out data (accuracy, AUROC, HR@10, ...).
      mia_auc: the best membership-inference AUC over the attacks run (0.5 = no leak).
      seconds: wall-clock training time.
      seed: the seed of weight initialisation (and data order) for this run.
    """

    model: str
    target_epsilon: float | None
    epsilon: float
    noise_multiplier: float
    l2_norm_clip: float | None
    batch_size: int
    epochs: float
    learning_rate: float
    accountant: str
    metrics: dict[str, float]
    mia_auc: float
    seconds: float
    seed: int = 0

    @property
    def private(self) -> bool:
        return self.target_epsilon is not None


@dataclasses.dataclass(frozen=True)
class Summary:
    """Rows of one (model, target epsilon), aggregated over seeds: (mean, sd) pairs."""

    first: Row
    runs: int
    epsilon: float
    metrics: dict[str, tuple[float, float]]
    mia_auc: tuple[float, float]
    seconds: float


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    sd = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return float(array.mean()), sd


def summarize(rows: Sequence[Row]) -> list[Summary]:
    """Group rows by (model, target epsilon) and the training settings (learning rate,
    batch, epochs), in order of first appearance; mean and sd over the group's runs (seeds).
    Runs of other settings (a learning-rate grid) are their own rows, never averaged."""
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        key = (row.model, row.target_epsilon, row.learning_rate, row.batch_size, row.epochs)
        groups.setdefault(key, []).append(row)
    summaries = []
    for group in groups.values():
        names = list(group[0].metrics)
        summaries.append(
            Summary(
                first=group[0],
                runs=len(group),
                epsilon=float(np.mean([row.epsilon for row in group])),
                metrics={name: _mean_sd([row.metrics[name] for row in group]) for name in names},
                mia_auc=_mean_sd([row.mia_auc for row in group]),
                seconds=float(np.mean([row.seconds for row in group])),
            )
        )
    return summaries


def _value(pair: tuple[float, float], runs: int, digits: int = 3) -> str:
    mean, sd = pair
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if runs > 1 else f"{mean:.{digits}f}"


def _number(value: float | None, digits: int = 3) -> str:
    if value is None or math.isnan(value):
        return "—"
    if math.isinf(value):
        return "∞"
    return f"{value:.{digits}g}"


def table_cells(
    rows: Sequence[Row], metrics: Sequence[str] | None = None
) -> tuple[list[str], list[list[str]]]:
    """``(header, lines)`` of the comparison table, one line per (model, target).

    Columns: model, target ε, measured ε, σ, C, batch, epochs, learning rate, accountant,
    each metric of the rows (or those named in ``metrics``), membership-inference AUC,
    runs (seeds) and seconds per run. With several seeds a measurement reads "mean ± sd".
    """
    summaries = summarize(rows)
    if not summaries:
        return [], []
    metric_names = list(summaries[0].metrics) if metrics is None else list(metrics)
    header = [
        "model",
        "target ε",
        "ε",
        "σ",
        "C",
        "batch",
        "epochs",
        "lr",
        "accountant",
        *metric_names,
        "MIA AUC",
        "runs",
        "s/run",
    ]
    lines = []
    for s in summaries:
        row = s.first
        lines.append(
            [
                row.model,
                "non-private" if row.target_epsilon is None else _number(row.target_epsilon),
                _number(s.epsilon),
                _number(row.noise_multiplier, 4),
                _number(row.l2_norm_clip),
                str(row.batch_size),
                _number(row.epochs),
                _number(row.learning_rate),
                row.accountant,
                *(_value(s.metrics[name], s.runs) for name in metric_names),
                _value(s.mia_auc, s.runs),
                str(s.runs),
                f"{s.seconds:.1f}",
            ]
        )
    return header, lines


def markdown_table(rows: Sequence[Row], metrics: Sequence[str] | None = None) -> str:
    """The comparison table (:func:`table_cells`) in Markdown."""
    header, lines = table_cells(rows, metrics)
    if not header:
        return ""
    text = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    text += ["| " + " | ".join(cells) + " |" for cells in lines]
    return "\n".join(text) + "\n"


def plot_vs_epsilon(rows: Sequence[Row], metric: str, path: str | os.PathLike, title: str) -> None:
    """Save a PNG of ``metric`` ("mia_auc" or a name in ``Row.metrics``) against epsilon
    (the same figure as :func:`png_vs_epsilon`).

    One line with error bars (sd over seeds) per model; its non-private value as a dashed
    line of the same colour. For "mia_auc" a dotted line marks 0.5 (chance).
    """
    Path(path).write_bytes(png_vs_epsilon(rows, metric, title))


def png_vs_epsilon(rows: Sequence[Row], metric: str, title: str) -> bytes:
    """The PNG of :func:`plot_vs_epsilon`, as bytes."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.0, 4.0), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    summaries = summarize(rows)
    models = list(dict.fromkeys(s.first.model for s in summaries))
    for index, model in enumerate(models):
        color = f"C{index}"
        mine = [s for s in summaries if s.first.model == model]
        private = sorted((s for s in mine if s.first.private), key=lambda s: s.epsilon)
        values = [s.mia_auc if metric == "mia_auc" else s.metrics[metric] for s in mine]
        pairs = dict(zip([id(s) for s in mine], values, strict=True))
        if private:
            axes.errorbar(
                [s.epsilon for s in private],
                [pairs[id(s)][0] for s in private],
                yerr=[pairs[id(s)][1] for s in private],
                marker="o",
                capsize=3,
                color=color,
                label=model if private[0].first.accountant == OBJECTIVE else f"{model}, DP-SGD",
            )
        for s in mine:
            if not s.first.private:
                axes.axhline(
                    pairs[id(s)][0], linestyle="--", color=color, label=f"{model}, non-private"
                )
    if metric == "mia_auc":
        axes.axhline(0.5, linestyle=":", color="grey", label="chance")
    axes.set_xscale("log")
    ticks = sorted({round(s.epsilon, 2) for s in summaries if s.first.private})
    if ticks:
        axes.set_xticks(ticks, [f"{t:g}" for t in ticks])
        axes.minorticks_off()
    axes.set_xlabel("ε (measured; log scale)")
    axes.set_ylabel("membership-inference AUC" if metric == "mia_auc" else metric)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_report(
    directory: str | os.PathLike,
    title: str,
    rows: Sequence[Row],
    metric: str,
    sections: Sequence[tuple[str, str]] = (),
    extra_tables: Sequence[tuple[str, Sequence[Row]]] = (),
    columns: Sequence[str] | None = None,
) -> Path:
    """Write the report into ``directory``: ``report.html`` (one self-contained page, the
    page machinery of :func:`keras_privacy.privacy_report`), its Markdown companion
    ``report.md``, the plots as PNG files and ``results.json`` (every row).

    ``metric`` is the utility metric to plot (a key of ``Row.metrics``). ``sections`` are
    (heading, Markdown text) pairs written after the main table; ``extra_tables`` are
    (heading, rows) pairs written as further tables (ablations). ``columns``: the metrics
    the main table shows (default: all; ``results.json`` always has all). Returns the
    Markdown report's path (``report.html`` is beside it).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "_" for c in metric.lower()).strip("_")
    utility_png = f"{slug}_vs_epsilon.png"
    utility = png_vs_epsilon(rows, metric, f"{metric} vs ε")
    attacks = png_vs_epsilon(rows, "mia_auc", "membership inference")
    (directory / utility_png).write_bytes(utility)
    (directory / "mia_auc_vs_epsilon.png").write_bytes(attacks)
    parts = [f"# {title}\n\n", markdown_table(rows, columns)]
    parts.append(f"\n![{metric} vs ε]({utility_png})\n")
    parts.append("\n![membership-inference AUC vs ε](mia_auc_vs_epsilon.png)\n")
    for heading, table_rows in extra_tables:
        parts.append(f"\n## {heading}\n\n{markdown_table(table_rows)}")
    for heading, text in sections:
        parts.append(f"\n## {heading}\n\n{text.strip()}\n")
    path = directory / "report.md"
    path.write_text("".join(parts), encoding="utf-8")
    figures = [
        (utility_png, utility, f"{metric} against ε"),
        ("mia_auc_vs_epsilon.png", attacks, "membership-inference AUC against ε"),
    ]
    html_page(title, rows, metric, figures, sections, extra_tables, columns).write(directory)
    every_row = [*rows, *(row for _, table_rows in extra_tables for row in table_rows)]
    records = [
        {**dataclasses.asdict(row), "epsilon": _json_number(row.epsilon)} for row in every_row
    ]
    (directory / "results.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path


def _headline(rows: Sequence[Row], metric: str) -> str:
    """Per model: its most private run beside its non-private one, in words."""
    import html

    lines = []
    summaries = summarize(rows)
    for model in dict.fromkeys(s.first.model for s in summaries):
        mine = [s for s in summaries if s.first.model == model]
        private = [s for s in mine if s.first.private]
        plain = [s for s in mine if not s.first.private]
        if not private:
            continue
        best = min(private, key=lambda s: s.epsilon)
        value = best.metrics.get(metric, (math.nan, 0.0))[0]
        text = (
            f"<b>{html.escape(model)}</b> at ε = {_number(best.epsilon)}: "
            f"{html.escape(metric)} {_number(value)}"
        )
        if plain:
            text += f" (without DP: {_number(plain[0].metrics.get(metric, (math.nan,))[0])})"
        text += f"; strongest membership attack AUC {_number(best.mia_auc[0])} (chance 0.5)."
        lines.append(f"<p>{text}</p>")
    return "".join(lines)


def html_page(
    title: str,
    rows: Sequence[Row],
    metric: str,
    figures: Sequence[tuple[str, bytes, str]],
    sections: Sequence[tuple[str, str]] = (),
    extra_tables: Sequence[tuple[str, Sequence[Row]]] = (),
    columns: Sequence[str] | None = None,
):
    """The tutorial's report as a :class:`keras_privacy.reporting.page.Page`: a headline
    per model, the comparison table beside its plots, the extra tables, the notes (Markdown,
    rendered with the ``markdown`` package of the tutorials extra)."""
    from keras_privacy.reporting.page import Figure, Page, Section, table

    try:
        import markdown
    except ImportError as error:  # pragma: no cover - the tutorials extra installs it
        raise ImportError(
            "the tutorials' HTML report renders its notes with 'markdown': "
            "pip install 'keras-privacy[tutorials]'"
        ) from error
    page = Page(title, subtitle="Each row: one model trained at one target ε (or without DP).")
    page.headline = _headline(rows, metric)
    header, lines = table_cells(rows, columns)
    page.add(
        Section(
            "Results",
            table(header, lines),
            [Figure(name, png, caption, caption) for name, png, caption in figures],
            layout="below",
            anchor="results",
        )
    )
    for heading, table_rows in extra_tables:
        header, lines = table_cells(table_rows)
        page.add(Section(heading, table(header, lines)))
    for heading, text in sections:
        notes = markdown.markdown(text.strip(), extensions=["tables"])
        page.add(Section(heading, notes, badge=False))
    return page


def _json_number(value: float) -> float | str:
    return "inf" if math.isinf(value) else value


def chance_auc_halfwidth(members: int, non_members: int, z: float = 1.96) -> float:
    """Half-width of the normal-approximation interval of an AUC of 0.5 (Hanley-McNeil).

    With A = 0.5, Q1 = A / (2 - A) and Q2 = 2A^2 / (1 + A):

        SE^2 = (A(1 - A) + (m - 1)(Q1 - A^2) + (n - 1)(Q2 - A^2)) / (m n)

    for m members and n non-members; an attack AUC within 0.5 ± z SE is what an attacker
    with no information would often measure on sets this small.
    """
    if members < 1 or non_members < 1:
        raise ValueError("members and non_members must be positive")
    a = 0.5
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    variance = a * (1 - a) + (members - 1) * (q1 - a * a) + (non_members - 1) * (q2 - a * a)
    return z * math.sqrt(variance / (members * non_members))
