"""No file of product code grows past MAX_LINES: past that, a module serves more than one
purpose, and is split by what it serves (not by cutting a function in two)."""

from tests.support.processes import ROOT

MAX_LINES = 500
PACKAGES = ("apps", "agent", "worker", "protocol", "controller_site")


def product_files():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts:
                yield path.relative_to(ROOT).as_posix(), path


def test_no_product_file_is_over_the_limit():
    sizes = {name: len(path.read_text().splitlines()) for name, path in product_files()}
    over = {name: lines for name, lines in sizes.items() if lines > MAX_LINES}
    assert over == {}
    assert "apps/configs/watch.py" in sizes, "the walk found the product files"
