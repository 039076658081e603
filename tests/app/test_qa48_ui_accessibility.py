"""QA round 48: the /ui pages for a hospital's accessibility requirement (WCAG 2.1 AA /
EN 301 549), read from the rendered HTML and CSS, no browser and no axe needed.

What an audit with axe-core 4 and a keyboard/screen-reader walk found, and what stays fixed:
- the "Not for clinical use" notice sat between the header and <main>, outside every
  landmark: "Skip to content" and a screen reader's jump to the main landmark both went past
  it. It is now the first thing in <main>;
- the focus ring (#e8a317) had 2.2:1 against the white page, under the 3:1 of WCAG 1.4.11;
- the login error was announced once but not tied to the key field (aria-describedby);
- an error page's title was "Error" whatever the error; a list whose filters were refused
  kept the title "Predictions";
- the Grad-CAM overlay's text alternative said how the figure is laid out but not what its
  colour bar means (0 low to 1 high, relative), the score or the "Not for clinical use" the
  image carries.
Plus the invariants every page keeps: lang, one h1, alt on every image, a label for every
control, a scope on every table header."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.app.conftest import Service, TestClient, dicom_bytes, new_uid
from tests.app.test_ui import login

CSS = Path(__file__).resolve().parents[2] / "app" / "ui" / "static" / "ui.css"
NOT_FOR_CLINICAL_USE = "Not for clinical use"


# --- a small DOM from the stdlib parser ------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)
    text: list[str] = field(default_factory=list)

    def ancestors(self) -> Iterator[Node]:
        node = self.parent
        while node is not None:
            yield node
            node = node.parent

    def all_text(self) -> str:
        parts = list(self.text)
        for child in self.children:
            parts.append(child.all_text())
        return re.sub(r"\s+", " ", " ".join(parts)).strip()


class Dom(HTMLParser):
    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.current = self.root
        self.nodes: list[Node] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(node)
        self.nodes.append(node)
        if tag not in VOID:
            self.current = node

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.text.append(data)

    def find_all(self, tag: str, **attrs: str) -> list[Node]:
        return [
            n
            for n in self.nodes
            if n.tag == tag and all(n.attrs.get(k.rstrip("_")) == v for k, v in attrs.items())
        ]

    def by_id(self, element_id: str) -> Node:
        found = [n for n in self.nodes if n.attrs.get("id") == element_id]
        assert len(found) == 1, (element_id, found)
        return found[0]


# --- colour contrast (WCAG 2.1 relative luminance) --------------------------------------------


def luminance(colour: str) -> float:
    hex_ = colour.lstrip("#")
    if len(hex_) == 3:
        hex_ = "".join(c * 2 for c in hex_)
    channels = [int(hex_[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    la, lb = luminance(a), luminance(b)
    return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)


def css_rules() -> dict[str, str]:
    """selector -> declarations of ui.css (comments removed)."""
    text = re.sub(r"/\*.*?\*/", "", CSS.read_text(), flags=re.S)
    return {sel.strip(): body for sel, body in re.findall(r"([^{}]+)\{([^}]*)\}", text)}


def css_colour(declarations: str, prop: str) -> str:
    match = re.search(rf"(?:^|;)\s*{prop}\s*:[^;]*?(#[0-9a-fA-F]{{3,6}})\b", declarations)
    assert match, (prop, declarations)
    return match.group(1)


def test_the_contrast_helper_matches_known_ratios() -> None:
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)


def test_the_focus_ring_has_3_to_1_against_every_background_it_is_drawn_on() -> None:
    """WCAG 1.4.11: the focus indicator against what is around it, on the white page, in the
    dark header, on the flagged and key rows and on the notice."""
    rules = css_rules()
    focus = [body for selector, body in rules.items() if ":focus" in selector and "outline" in body]
    assert focus, "ui.css has no focus outline"
    backgrounds = {
        "page": css_colour(rules["body"], "background"),
        "header": css_colour(rules["header"], "background"),
        "flagged row": css_colour(rules["tr.flagged td"], "background"),
        "key row": css_colour(rules["tr.key td"], "background"),
        "notice": css_colour(rules[".notice"], "background"),
    }
    for body in focus:
        ring = css_colour(body, "outline")
        for where, background in backgrounds.items():
            ratio = contrast(ring, background)
            assert ratio >= 3.0, f"focus ring {ring} on the {where} ({background}): {ratio:.2f}:1"


def test_the_badge_and_notice_colours_keep_aa_contrast() -> None:
    """The colour pairs the pages' status is shown in (text contrast 4.5:1)."""
    rules = css_rules()
    pairs = {
        ".flag": (css_colour(rules[".flag"], "color"), css_colour(rules[".flag"], "background")),
        ".notice": (
            css_colour(rules[".notice"], "color"),
            css_colour(rules[".notice"], "background"),
        ),
        ".key-mark on a key row": (
            css_colour(rules[".key-mark"], "color"),
            css_colour(rules["tr.key td"], "background"),
        ),
        "a link on a flagged row": (
            css_colour(rules["a"], "color"),
            css_colour(rules["tr.flagged td"], "background"),
        ),
    }
    for what, (fg, bg) in pairs.items():
        assert contrast(fg, bg) >= 4.5, f"{what}: {fg} on {bg}"


# --- the pages ---------------------------------------------------------------------------------


@pytest.fixture()
def ui(service: Service) -> Iterator[TestClient]:
    service.client.cookies.clear()
    yield service.client
    service.client.cookies.clear()


def _explained(service: Service, study: str, series: str, number: int) -> dict[str, Any]:
    data = dicom_bytes(study=study, series=series, instance=number, seed=uuid.uuid4().int % 2**32)
    response = service.post(data, params={"explain": "true"})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _pages(ui: TestClient, service: Service) -> dict[str, str]:
    study, series = new_uid(), new_uid()
    posted = [_explained(service, study, series, n) for n in (1, 2)]
    login(ui, service.api_key or "")
    paths = {
        "list": "/ui/predictions",
        "bad filter": "/ui/predictions?date_from=2026-12-31&date_to=2026-01-01",
        "prediction": f"/ui/predictions/{posted[0]['id']}",
        "series": f"/ui/series/{series}",
        "upload": "/ui/upload",
        "model": "/ui/model",
        "drift": "/ui/drift",
        "not found": "/ui/predictions/00000000-0000-0000-0000-000000000000",
    }
    pages = {name: ui.get(path).text for name, path in paths.items()}
    ui.cookies.clear()
    pages["login"] = ui.get("/ui/login").text
    return pages


def test_the_clinical_use_notice_is_the_first_thing_in_main(
    ui: TestClient, service: Service
) -> None:
    """Inside <main>, first: what "Skip to content" and the main landmark lead to (it was
    between the header and <main>, outside every landmark)."""
    for name, html in _pages(ui, service).items():
        dom = Dom(html)
        notes = [
            n for n in dom.find_all("p", class_="notice") if NOT_FOR_CLINICAL_USE in n.all_text()
        ]
        assert len(notes) == 1, name
        note = notes[0]
        assert note.attrs.get("role") == "note", name
        main = dom.find_all("main")
        assert len(main) == 1 and main[0].attrs.get("id") == "main", name
        assert main[0] in note.ancestors(), f"{name}: the notice is outside <main>"
        assert main[0].children[0] is note, f"{name}: something comes before the notice"
        skip = dom.find_all("a", class_="skip")
        assert skip and skip[0].attrs["href"] == "#main", name


def test_every_page_has_lang_one_h1_alt_labels_and_scoped_headers(
    ui: TestClient, service: Service
) -> None:
    for name, html in _pages(ui, service).items():
        dom = Dom(html)
        assert dom.find_all("html")[0].attrs.get("lang") == "en", name
        assert len(dom.find_all("h1")) == 1, name
        title = dom.find_all("title")[0].all_text()
        assert title.endswith("· radlens") and len(title) > len("· radlens"), name
        for img in dom.find_all("img"):
            assert img.attrs.get("alt", "").strip(), f"{name}: {img.attrs.get('src')} has no alt"
        labels = {n.attrs.get("for") for n in dom.find_all("label")}
        for tag in ("input", "select", "textarea"):
            for control in dom.find_all(tag):
                if control.attrs.get("type") == "hidden":
                    continue
                assert control.attrs.get("id") in labels or control.attrs.get("aria-label"), (
                    f"{name}: {control.attrs} has no label"
                )
        for th in dom.find_all("th"):
            assert th.attrs.get("scope") in ("col", "row"), f"{name}: <th> without scope"
        for region in [n for n in dom.nodes if n.attrs.get("role") == "region"]:
            assert region.attrs.get("aria-label") or region.attrs.get("aria-labelledby"), name


def test_a_refused_login_ties_its_message_to_the_key_field(ui: TestClient) -> None:
    token = re.search(r'name="csrf_token" value="([^"]+)"', ui.get("/ui/login").text)
    assert token
    page = ui.post("/ui/login", data={"csrf_token": token.group(1), "api_key": "rl_not_a_key"})
    assert page.status_code == 401
    dom = Dom(page.text)
    alerts = [n for n in dom.nodes if n.attrs.get("role") == "alert"]
    assert len(alerts) == 1 and "Not logged in" in alerts[0].all_text()
    described = dom.by_id("api_key").attrs.get("aria-describedby", "").split()
    assert alerts[0].attrs.get("id") in described, "the error is not read with the field"
    assert "key-help" in described
    for ref in described:
        dom.by_id(ref)  # each reference resolves


def test_error_titles_say_there_is_an_error(ui: TestClient, service: Service) -> None:
    pages = _pages(ui, service)
    missing = Dom(pages["not found"])
    heading = missing.find_all("h1")[0].all_text()
    assert heading and missing.find_all("title")[0].all_text() == f"Error: {heading} · radlens"
    assert Dom(pages["bad filter"]).find_all("title")[0].all_text().startswith("Error:")
    assert Dom(pages["list"]).find_all("title")[0].all_text() == "Predictions · radlens"


def test_the_overlay_text_alternative_tells_the_score_and_the_colour_scale(
    ui: TestClient, service: Service
) -> None:
    """What a screen reader hears for the Grad-CAM figure: its layout, the class and score,
    what the colour bar means (0 low to 1 high, relative) and the image's own warning."""
    pages = _pages(ui, service)
    dom = Dom(pages["prediction"])
    overlay = dom.by_id("overlay")
    alt = overlay.attrs["alt"]
    figure = overlay.parent
    assert figure is not None and figure.tag == "figure"
    caption = next(c for c in figure.children if c.tag == "figcaption")
    class_name = next(c for c in caption.children if c.tag == "strong").all_text()
    score = re.search(r"\((\d\.\d{3})\)", caption.all_text())
    assert class_name and score, caption.all_text()
    for expected in (
        f"class {class_name} (score {score.group(1)})",
        "from 0, low, to 1, high",
        f"the more it weighed for {class_name}, relative to this image only",
        NOT_FOR_CLINICAL_USE,
    ):
        assert expected in alt, (expected, alt)
    thumbs = [i.attrs["alt"] for i in Dom(pages["series"]).find_all("img")]
    assert thumbs and all(
        "the more strongly coloured the more an area weighed" in a for a in thumbs
    )


def test_the_upload_form_has_a_status_region(ui: TestClient, service: Service) -> None:
    """The script writes "predicting" into it (WCAG 4.1.3); tested live in
    test_qa48_ui_browser.py."""
    dom = Dom(_pages(ui, service)["upload"])
    status = dom.by_id("upload-status")
    assert status.attrs.get("role") == "status"
    assert any(a is dom.find_all("form", class_="upload")[0] for a in status.ancestors())
