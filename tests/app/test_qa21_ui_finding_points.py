"""QA round 21: the /ui prediction page of a multi-label prediction names the operating point
each finding was decided at, as the API's ``findings[].operating_point`` does.

Served at RADLENS_OPERATING_POINT=sens95, the page said "Decision threshold: none (highest
score) (operating point sens95)": a multi-label label is not the highest score, and a finding
without a sens95 point (Nodule here) was decided at its trained threshold, not at sens95.
SQLite and PostgreSQL (the shared fixtures of test_findings_operating_points)."""

from __future__ import annotations

import html
import re
from typing import Any

from tests.app.test_findings_operating_points import (  # noqa: F401 (fixtures)
    POINT_OF,
    make_service,
    points_store,
)


def _rows(page: str) -> dict[str, list[str]]:
    """The findings table's rows: finding -> its cells."""
    table = page.split('<table class="findings">', 1)[1].split("</table>", 1)[0]
    rows = {}
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table.split("<tbody>", 1)[1], re.S):
        cells = [html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", row, re.S)]
        rows[cells[0]] = cells[1:]
    return rows


def test_each_finding_says_its_operating_point(make_service: Any) -> None:  # noqa: F811
    service = make_service(operating_point="sens95")
    body = service.post(4)
    page = service.client.get(f"/ui/predictions/{body['id']}")
    assert page.status_code == 200, page.text
    text = html.unescape(page.text)
    assert "none (highest score)" not in text
    assert "Decision thresholds: one per finding (below)" in text
    assert "Operating point</th>" in text
    rows = _rows(page.text)
    assert {name: cells[3] for name, cells in rows.items()} == POINT_OF
    api = {f["name"]: f["operating_point"] for f in body["findings"]}
    assert api == POINT_OF


def test_unset_says_chosen_for_every_finding(make_service: Any) -> None:  # noqa: F811
    service = make_service()
    body = service.post(5)
    page = service.client.get(f"/ui/predictions/{body['id']}")
    assert page.status_code == 200, page.text
    assert {cells[3] for cells in _rows(page.text).values()} == {"chosen"}
    assert "served at\n  operating point" not in page.text
