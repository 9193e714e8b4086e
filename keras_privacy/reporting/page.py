"""One self-contained HTML page: a headline, sections of text, tables and figures.

Every report keras-privacy writes (the privacy report of one model, the tutorials'
comparison reports) is a :class:`Page`. The page carries its own CSS and embeds each
figure as a base64 ``data:`` URI, so the one ``report.html`` file can be opened, mailed or
kept as a CI artefact without the folder it came from; the figures are also written as
PNG files beside it, for slides, READMEs and Markdown companions. Plain standard library:
no template engine, every text is HTML-escaped where it enters the page.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import html
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["Figure", "Page", "Section", "format_number", "table"]

_CSS = """
:root { --ink:#1d2430; --muted:#5b6472; --line:#d9dee6; --accent:#2456a6;
        --good:#1e7b45; --warn:#a4580a; --bad:#b3261e; --paper:#ffffff; --wash:#f4f6f9; }
* { box-sizing: border-box; }
body { margin:0; background:var(--wash); color:var(--ink);
       font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1060px; margin: 0 auto; padding: 28px 28px 60px; }
header.top { margin-bottom: 18px; }
header.top h1 { font-size: 26px; margin: 0 0 4px; }
header.top .meta { color: var(--muted); font-size: 13px; }
.headline { background: var(--paper); border-left: 6px solid var(--accent); border-radius: 8px;
            padding: 18px 22px; margin: 0 0 22px; box-shadow: 0 1px 3px rgba(0,0,0,.08); }
.headline .big { font-size: 30px; font-weight: 650; letter-spacing: -.01em; }
.headline .big small { font-size: 17px; font-weight: 500; color: var(--muted); }
.headline p { margin: 8px 0 0; max-width: 860px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 14px; }
.card { background: var(--wash); border-radius: 6px; padding: 8px 14px; min-width: 150px; }
.card .label { font-size: 12.5px; color: var(--muted); }
.card .value { font-size: 19px; font-weight: 600; }
nav.toc { font-size: 13px; margin: 0 0 18px; color: var(--muted); }
nav.toc a { color: var(--accent); text-decoration: none; margin-right: 14px; white-space: nowrap; }
section { background: var(--paper); border-radius: 8px; padding: 16px 22px 20px;
          margin: 0 0 18px; box-shadow: 0 1px 3px rgba(0,0,0,.08); }
section h2 { font-size: 19px; margin: 0 0 8px; }
section h3 { font-size: 16px; margin: 16px 0 6px; }
section.empty { background: #fbfbfc; border: 1px dashed var(--line); box-shadow: none; }
section.empty h2 { color: var(--muted); }
.status { display:inline-block; font-size: 11px; font-weight: 600; padding: 1px 8px;
          border-radius: 10px; vertical-align: middle; margin-left: 8px; letter-spacing: .03em; }
.status.filled { background: #e3f1e8; color: var(--good); }
.status.empty { background: #eceff3; color: var(--muted); }
.note { color: var(--muted); font-size: 13.5px; }
.callout { border-radius: 6px; padding: 8px 12px; margin: 10px 0; }
.callout.good { background: #e9f5ee; border-left: 4px solid var(--good); }
.callout.warn { background: #fdf1e3; border-left: 4px solid var(--warn); }
.callout.bad { background: #fbe9e8; border-left: 4px solid var(--bad); }
.split { display: flex; flex-wrap: wrap; gap: 4px 26px; align-items: flex-start; }
.split > .text { flex: 1 1 360px; min-width: 0; }
.split > .figures { flex: 0 1 540px; }
.figures { display: flex; flex-wrap: wrap; gap: 14px; }
.below > .figures figure { max-width: 640px; }
figure { margin: 8px 0; flex: 1 1 420px; max-width: 100%; }
figure img { width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { font-size: 13px; color: var(--muted); margin-top: 4px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13.5px;
        font-variant-numeric: tabular-nums; }
.table-wrap { overflow-x: auto; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 10px; text-align: right; }
th { background: var(--wash); font-weight: 600; }
th:first-child, td:first-child { text-align: left; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px; }
pre { background: var(--wash); padding: 10px; border-radius: 6px; overflow-x: auto; }
footer { color: var(--muted); font-size: 12px; margin-top: 24px; }
"""


def format_number(value: float | None, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits; "—" for None/NaN, "∞" for infinity."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "−∞"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}"


def _cell(value: Any) -> str:
    if isinstance(value, Markup):
        return str(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return html.escape(format_number(value))
    return html.escape("" if value is None else str(value))


class Markup(str):
    """A string that is already HTML (not escaped again by :func:`table`)."""


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table: ``header`` cells, then one line per row. Numbers are formatted with
    :func:`format_number`; strings are escaped; :class:`Markup` is kept as HTML."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<div class="table-wrap"><table><tr>{head}</tr>{body}</table></div>'


@dataclasses.dataclass
class Figure:
    """A PNG figure of a page: its file name (written beside the page), its bytes, the
    alternative text and a caption (plain text)."""

    filename: str
    png: bytes
    alt: str
    caption: str = ""

    def html(self) -> str:
        data = base64.b64encode(self.png).decode("ascii")
        caption = f"<figcaption>{html.escape(self.caption)}</figcaption>" if self.caption else ""
        return (
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(self.alt)}" '
            f'data-file="{html.escape(self.filename)}">{caption}</figure>'
        )


@dataclasses.dataclass
class Section:
    """One section of a page. ``body`` is HTML (build it with :func:`table`,
    :func:`paragraph`, ``html.escape``). ``filled`` is False for a section that had no
    input: its body then says what to pass to fill it, and the page marks it "not run"."""

    title: str
    body: str
    figures: list[Figure] = dataclasses.field(default_factory=list)
    filled: bool = True
    anchor: str = ""
    #: "side": text left, figures right (wrapping on narrow screens); "below": figures
    #: under the text (for wide tables).
    layout: str = "side"
    #: False for sections of plain notes: no "measured" / "not run" badge.
    badge: bool = True

    def __post_init__(self) -> None:
        if not self.anchor:
            self.anchor = re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")

    def html(self) -> str:
        status = ""
        if self.badge:
            status = (
                '<span class="status filled">measured</span>'
                if self.filled
                else '<span class="status empty">not run</span>'
            )
        css = "" if self.filled else ' class="empty"'
        content = self.body
        if self.figures:
            figures = '<div class="figures">' + "".join(f.html() for f in self.figures) + "</div>"
            layout = "split" if self.layout == "side" else "below"
            content = f'<div class="{layout}"><div class="text">{self.body}</div>{figures}</div>'
        return (
            f'<section id="{self.anchor}"{css}><h2>{html.escape(self.title)}{status}</h2>'
            f"{content}</section>"
        )


def paragraph(text: str, css: str = "") -> str:
    """``<p>`` of escaped ``text`` (``css``: a class such as ``"note"``)."""
    attribute = f' class="{css}"' if css else ""
    return f"<p{attribute}>{html.escape(text)}</p>"


def callout(text: str, kind: str = "warn") -> str:
    """A coloured box: ``kind`` is ``"good"``, ``"warn"`` or ``"bad"``."""
    return f'<div class="callout {kind}">{html.escape(text)}</div>'


@dataclasses.dataclass
class Page:
    """A report page: title, headline (HTML), sections, and a footer line.

    :meth:`write` saves ``report.html`` and every figure's PNG into a folder.
    """

    title: str
    headline: str = ""
    sections: list[Section] = dataclasses.field(default_factory=list)
    subtitle: str = ""

    def add(self, section: Section) -> Section:
        self.sections.append(section)
        return section

    def html(self) -> str:
        from keras_privacy import __version__

        toc = " ".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in self.sections)
        made = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        subtitle = f'<div class="meta">{html.escape(self.subtitle)}</div>' if self.subtitle else ""
        headline = f'<div class="headline">{self.headline}</div>' if self.headline else ""
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body><main>"
            f'<header class="top"><h1>{html.escape(self.title)}</h1>{subtitle}</header>'
            f'{headline}<nav class="toc">{toc}</nav>'
            + "".join(s.html() for s in self.sections)
            + f"<footer>Written by keras-privacy {html.escape(__version__)} on {made}.</footer>"
            "</main></body></html>\n"
        )

    def write(self, directory: str | os.PathLike, name: str = "report.html") -> Path:
        """Write the page and its figures' PNG files into ``directory``; return the page's
        path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for section in self.sections:
            for figure in section.figures:
                (directory / figure.filename).write_bytes(figure.png)
        path = directory / name
        path.write_text(self.html(), encoding="utf-8")
        return path
