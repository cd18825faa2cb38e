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
