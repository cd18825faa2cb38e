"""docs/DEPLOYMENT.md and its diagram: the pictures are rendered from the committed source."""

import re
import shutil
import subprocess

from tests.conftest import unavailable
from tests.support.processes import ROOT

DOCS = ROOT / "docs"


def _texts(svg: str) -> set[str]:
    # Graphviz writes every node and edge label line as a <text> element.
    return set(re.findall(r"<text[^>]*>([^<]*)</text>", svg))


def test_the_committed_svg_is_the_rendering_of_the_committed_source():
    dot = shutil.which("dot")
    if dot is None:
        unavailable("graphviz is not installed (Debian: apt-get install graphviz)")
    rendered = subprocess.run(
        [dot, "-Tsvg", str(DOCS / "deployment.dot")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    committed = (DOCS / "deployment.svg").read_text()
    assert _texts(rendered), "the diagram has no labels"
    assert _texts(committed) == _texts(rendered), "run `make diagrams` and commit the result"


def test_the_png_is_there_and_every_document_links_the_pictures():
    png = (DOCS / "deployment.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    deployment = (DOCS / "DEPLOYMENT.md").read_text()
    assert "](deployment.png)" in deployment and "](deployment.svg)" in deployment
    assert "docs/DEPLOYMENT.md" in (ROOT / "README.md").read_text()
    for section in ("## Topology", "## Sizing", "## Timeouts that must line up", "## Upgrades"):
        assert section in deployment


# A figure with a unit of time, memory or rate: what a measurement gives.
MEASURED_FIGURE = re.compile(r"\d[\d,.]*\s*(ms|s|KiB|MiB|GiB|req/s|/s|%)(?![\w])")


def _sizing_rows(deployment: str) -> list[list[str]]:
    section = deployment.split("## Sizing", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[1:]]


def test_the_sizing_table_quotes_no_measured_figure_and_names_generated_tables():
    deployment = (DOCS / "DEPLOYMENT.md").read_text()
    performance = (DOCS / "PERFORMANCE.md").read_text()
    sections = {
        heading.split(":")[0]: body
        for heading, body in re.findall(r"^## ([^\n]+)\n(.*?)(?=^## |\Z)", performance, re.M | re.S)
    }
    rows = _sizing_rows(deployment)
    assert len(rows) >= 5
    for quantity, measured, _rule in rows:
        assert not MEASURED_FIGURE.search(measured), (quantity, measured)
        named = re.match(r'"([^"]+)"', measured)
        assert named, f"{quantity}: name the PERFORMANCE.md section its figure comes from"
        body = sections.get(named[1])
        assert body is not None, f"{quantity}: no section {named[1]!r} in PERFORMANCE.md"
        assert "<!-- bench:" in body, f"{quantity}: section {named[1]!r} has no generated table"


def test_a_figure_typed_into_the_sizing_table_is_caught():
    deployment = (DOCS / "DEPLOYMENT.md").read_text()
    quantity, measured, _ = _sizing_rows(deployment)[0]
    typed = deployment.replace(measured, "10,000 watches answered within 0.9 s (p99)", 1)
    assert any(MEASURED_FIGURE.search(row[1]) for row in _sizing_rows(typed))
