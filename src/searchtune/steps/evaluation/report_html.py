"""The report's HTML building blocks, shared by its section modules (``report``, ``report_within``, ``report_trend``)."""

from __future__ import annotations

import html


def e(text) -> str:
    """``text`` escaped for HTML."""
    return html.escape(str(text))


def table(header: list[str], rows: list[list[str]], numeric_from: int = 1, numeric_to: int | None = None) -> str:
    """An HTML table; cells are already-escaped HTML; columns from ``numeric_from`` (up to ``numeric_to``) are right-aligned."""
    head = "".join(f"<th>{h}</th>" for h in header)
    numeric = range(numeric_from, len(header) if numeric_to is None else numeric_to)
    body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{caption}</figcaption></figure>"
