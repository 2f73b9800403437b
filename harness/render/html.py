"""Self-contained HTML pages of results (`harness report`, nightly's report): tables formatted like the markdown
ones, figures embedded as PNG."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd
from pandas.io.formats.style import Styler

from harness.render.tables import fmt_value, pyplot

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def figure_png(fig: Figure) -> bytes:
    """A figure as PNG bytes (the figure is closed)."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def html_table(table: pd.DataFrame, table_id: str, row_class: Sequence[str] | None = None) -> str:
    """`table` as HTML (pandas Styler) with the markdown tables' number formatting; `row_class` classes each
    row's cells (`regression`, ...); `table_id` names the table, unique within a page."""

    data = table.reset_index(drop=True)
    styler = (Styler(data, uuid=table_id, cell_ids=False).hide(axis="index")
              .format(lambda v: html.escape(fmt_value(v) if isinstance(v, float) else str(v)))
              .format_index(escape="html", axis=1))
    if row_class is not None:
        styler = styler.set_td_classes(pd.DataFrame([[cls or ""] * data.shape[1] for cls in row_class],
                                                    index=data.index, columns=data.columns))
    return styler.to_html()


def html_image(png: bytes, alt: str) -> str:
    """An <img> with the PNG embedded as base64, so the page stands alone."""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def html_page(title: str, body: str) -> str:
    """A small self-contained HTML page."""
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0;"
             "font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f2f2f2}"
             "td:first-child,th:first-child{text-align:left}td.regression{background:#fdd}"
             "td.improvement{background:#dfd}td.missing{background:#fec}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


