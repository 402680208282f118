"""A monthly investor statement as a PDF (ReportLab): the same strings as the JSON, one A4 document.

ReportLab was measured against typst's Python binding and WeasyPrint on a statement of 60 lines and a balance
chart (docs/finance.md, "Why ReportLab"): 9 ms a PDF against 29 and 177, 28 MB of memory against 104 and 85, a
9 MB wheel with no system library (WeasyPrint needs Pango), and byte-for-byte the same PDF for the same figures
(`invariant`), which lets a stored statement's digest be reproduced. The font is Bitstream Vera, shipped inside
the reportlab wheel and embedded in the PDF: nothing is looked up on the machine or fetched at run time.
"""

from __future__ import annotations

import io
import threading
from functools import cache
from pathlib import Path
from typing import Any

import reportlab
from reportlab.graphics.shapes import Drawing, Line, PolyLine, Rect, String
from reportlab.lib import colors
from reportlab.lib.enums import TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import KeepTogether, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle
from reportlab.platypus.flowables import Flowable

FONT, BOLD = "InvledgerVera", "InvledgerVera-Bold"
_RENDERING = threading.Lock()
MEMO_CHARS_MAX = 44  # a line's memo is cut to this on paper, to fit its column (the JSON has it whole)
_INK, _MUTED, _RULE, _BAND = colors.HexColor("#1b2a3a"), colors.HexColor("#5b6b7b"), colors.HexColor("#c9d3dd"), \
    colors.HexColor("#eef3f7")


@cache
def _fonts() -> None:
    folder = Path(reportlab.__file__).parent / "fonts"
    pdfmetrics.registerFont(TTFont(FONT, str(folder / "Vera.ttf")))
    pdfmetrics.registerFont(TTFont(BOLD, str(folder / "VeraBd.ttf")))


def _style(size: float = 9, *, bold: bool = False, color: Any = _INK, align: int = 0,
           leading: float | None = None) -> ParagraphStyle:
    return ParagraphStyle("s", fontName=BOLD if bold else FONT, fontSize=size, leading=leading or size * 1.3,
                          textColor=color, alignment=align)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _percent(ratio: str | None) -> str:
    if ratio is None:
        return "—"
    from decimal import Decimal
    return f"{ratio} ({Decimal(ratio) * 100:.2f} %)"


class _Chart(Flowable):
    """The closing balance at each day's end of the month: a line over a light band, min and max labelled."""

    def __init__(self, days: list[dict[str, str]], width: float, height: float) -> None:
        super().__init__()
        self.days, self.width, self.height = days, width, height

    def draw(self) -> None:
        from decimal import Decimal

        drawing = Drawing(self.width, self.height)
        left, bottom, right, top = 62, 16, self.width - 8, self.height - 8
        drawing.add(Rect(left, bottom, right - left, top - bottom, fillColor=_BAND, strokeColor=None))
        values = [Decimal(d["balance"]) for d in self.days]
        if values:
            low, high = min(values), max(values)
            span = (high - low) or Decimal(1)
            step = (right - left) / max(1, len(values) - 1)
            points: list[float] = []
            for i, value in enumerate(values):
                points += [left + i * step, bottom + float((value - low) / span) * (top - bottom)]
            if len(values) == 1:
                points += [right, points[1]]
            drawing.add(PolyLine(points, strokeColor=colors.HexColor("#1f6feb"), strokeWidth=1.4))
            for value, y in ((high, top), (low, bottom)):
                drawing.add(String(left - 4, y - 3, str(value), fontName=FONT, fontSize=7, fillColor=_MUTED,
                                   textAnchor="end"))
                drawing.add(Line(left - 2, y, right, y, strokeColor=_RULE, strokeWidth=0.4))
            drawing.add(String(left, 4, self.days[0]["date"], fontName=FONT, fontSize=7, fillColor=_MUTED))
            drawing.add(String(right, 4, self.days[-1]["date"], fontName=FONT, fontSize=7, fillColor=_MUTED,
                               textAnchor="end"))
        drawing.drawOn(self.canv, 0, 0)


def render(body: dict[str, Any], *, platform: str = "invledger") -> bytes:
    """The statement `body` (ledger.statements.document: issue and figures) as PDF bytes; deterministic.
    One render at a time per process: ReportLab keeps per-font state (the embedded subsets) that threads would share;
    rendering is Python under the GIL anyway, so the lock costs no parallelism."""
    with _RENDERING:
        return _render(body, platform)


def _render(body: dict[str, Any], platform: str) -> bytes:
    _fonts()
    issue, f = body["statement"], body["figures"]
    out = io.BytesIO()
    title = f"Statement {f['account_id']} {f['month']}"
    doc = SimpleDocTemplate(out, pagesize=A4, invariant=1, leftMargin=16 * mm, rightMargin=16 * mm,
                            topMargin=14 * mm, bottomMargin=16 * mm, title=title, author=platform,
                            subject=f"monthly investor statement, version {issue['version']}", creator=platform)
    width = A4[0] - 32 * mm
    story: list[Flowable] = [
        Paragraph(f"{_escape(platform)} · monthly investor statement", _style(8, color=_MUTED)),
        Paragraph(_escape(f"Account {f['account_id']} — {f['month']}"), _style(17, bold=True, leading=22)),
        Paragraph(_escape(f"Period {f['period_start']} to {f['period_end']} (UTC) · currency {f['currency']} · "
                          f"version {issue['version']} · issued {issue['issued_at']} by {issue['issued_by'] or '—'}"),
                  _style(8, color=_MUTED)),
    ]
    if issue["corrects"] is not None:
        story += [Spacer(1, 4), Table(
            [[Paragraph(_escape(f"CORRECTED STATEMENT: replaces version {issue['version'] - 1} (statement "
                                f"{issue['corrects']}). What changed: " + "; ".join(issue["correction"])),
                        _style(8.5, bold=True, color=colors.HexColor("#8a1c1c")))]],
            colWidths=[width], style=TableStyle([("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#fdecec")),
                                                 ("BOX", (0, 0), (-1, -1), 0.6, colors.HexColor("#8a1c1c"))]))]
    story.append(Spacer(1, 8))

    def row(label: str, value: str | None, *, strong: bool = False) -> list[Paragraph]:
        return [Paragraph(_escape(label), _style(9, bold=strong)),
                Paragraph(_escape(value if value is not None else "—"), _style(9, bold=strong, align=TA_RIGHT))]

    summary = [row("Opening balance", f["opening_balance"], strong=True),
               row("Deposits", f["deposits"]), row("Withdrawals", f["withdrawals"]),
               row(f"Realised trading result ({f['trades_closed']} closed trades)", f["realised_trading_result"]),
               row("Mark-to-market true-ups (engine)", f["mark_to_market_true_ups"]),
               row("Adjustments", f["adjustments"]), row("Performance fee", f["performance_fee"]),
               row("Closing balance", f["closing_balance"], strong=True)]
    if "held_at_close" in f:  # figures format 2 (ledger.statements)
        summary += [row("Held for withdrawals at close", f["held_at_close"]),
                    row("Available at close", f["available_at_close"])]
    returns = [row("Time-weighted return, month", _percent(f["time_weighted_return_month"])),
               row("Time-weighted return, year to date", _percent(f["time_weighted_return_year_to_date"])),
               row("Max drawdown, month", _percent(f["max_drawdown_month"])),
               row("Fee rate", f["fee_rate"]),
               row("High-water mark before", f["high_water_mark_before"]),
               row("High-water mark after", f["high_water_mark_after"])]
    box = TableStyle([("LINEBELOW", (0, 0), (-1, -2), 0.3, _RULE), ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
                      ("TOPPADDING", (0, 0), (-1, -1), 2), ("BOTTOMPADDING", (0, 0), (-1, -1), 2)])
    half = (width - 8 * mm) / 2
    story.append(Table([[Table(summary, colWidths=[half * 0.66, half * 0.34], style=box),
                         Table(returns, colWidths=[half * 0.5, half * 0.5], style=box)]],
                       colWidths=[half + 8 * mm, half], style=TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"),
                                                                          ("LEFTPADDING", (0, 0), (-1, -1), 0)])))
    story += [Spacer(1, 8), Paragraph("Balance at each day's end", _style(10, bold=True)), Spacer(1, 2),
              _Chart(f["daily_balances"], width, 46 * mm), Spacer(1, 8)]

    # The lines are plain strings in table cells (a Paragraph per cell cost ten times the render time).
    header = ["Effective (UTC)", "Entry", "Kind", "Memo", "Amount", "Balance"]
    lines = [[line["effective_at"][:19].replace("T", " "), str(line["entry_id"]), line["kind"], _cut(line["memo"]),
              line["amount"], line["balance"]] for line in f["lines"]]
    opening = [f"{f['period_start']} 00:00:00", "", "opening", "", "", f["opening_balance"]]
    closing = [f"{f['period_end']} 23:59:59", "", "closing", "", "", f["closing_balance"]]
    table = Table([header, opening, *lines, closing], repeatRows=1,
                  colWidths=[width * w for w in (0.19, 0.08, 0.12, 0.35, 0.13, 0.13)],
                  style=TableStyle([("FONT", (0, 0), (-1, -1), FONT, 7.5), ("FONT", (0, 0), (-1, 0), BOLD, 8),
                                    ("TEXTCOLOR", (0, 0), (-1, 0), _MUTED), ("TEXTCOLOR", (0, 1), (-1, -1), _INK),
                                    ("ALIGN", (4, 0), (5, -1), "RIGHT"), ("FONT", (5, 1), (5, 1), BOLD, 7.5),
                                    ("FONT", (5, -1), (5, -1), BOLD, 7.5),
                                    ("LINEBELOW", (0, 0), (-1, 0), 0.6, _INK),
                                    ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, _BAND]),
                                    ("TOPPADDING", (0, 0), (-1, -1), 1.5), ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5)]))
    story += [KeepTogether([Paragraph(f"The month's lines ({len(lines)})", _style(10, bold=True)), Spacer(1, 3)]),
              table]

    def footer(canvas: Any, document: Any) -> None:
        canvas.saveState()
        canvas.setFont(FONT, 7)
        canvas.setFillColor(_MUTED)
        canvas.drawString(16 * mm, 9 * mm, f"{title} · version {issue['version']} · amounts in {f['currency']}, "
                                           "+ to the investor, − from")
        canvas.drawRightString(A4[0] - 16 * mm, 9 * mm, f"page {document.page}")
        canvas.restoreState()

    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return out.getvalue()


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MEMO_CHARS_MAX else text[:MEMO_CHARS_MAX - 1] + "…"
