"""The docs and the code agree on configuration: every environment variable the code reads is
documented in a table of README.md or docs/, and every variable documented there is read."""

from __future__ import annotations

import re

from bridge.config.settings import Settings
from tests.conftest import ROOT

# Read by the code but not a setting of the service: the sample sender's default shop.
NOT_SETTINGS = {"SAMPLE_SHOP"}
_READ = re.compile(
    # os.environ / getenv reads, click's envvar=, and gunicorn.conf.py's checked numbers.
    r"""(?:os\.environ\.get|os\.getenv|os\.environ\[|envvar=|_whole_number)\(?\s*["']"""
    r"""([A-Z][A-Z0-9_]+)["']"""
)
# A table row naming one or more variables in its first cell: | `A`, `B` | ...
_ROW = re.compile(r"(?m)^\| ((?:`[A-Z][A-Z0-9_]+`(?:, )?)+) \|")


def read_by_code() -> set[str]:
    names = {name.upper() for name in Settings.model_fields}
    sources = [*ROOT.joinpath("bridge").rglob("*.py"), *ROOT.joinpath("jobs").rglob("*.py")]
    sources.append(ROOT / "gunicorn.conf.py")
    for path in sources:
        names |= set(_READ.findall(path.read_text()))
    return names


def documented() -> set[str]:
    pages = [ROOT / "README.md", *sorted(ROOT.joinpath("docs").glob("*.md"))]
    names: set[str] = set()
    for page in pages:
        for cell in _ROW.findall(page.read_text()):
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", cell))
    return names


def test_every_variable_the_code_reads_is_documented() -> None:
    assert read_by_code() - documented() == set()


def test_every_documented_variable_is_read() -> None:
    assert documented() - read_by_code() == set()


def test_the_readme_is_a_front_door() -> None:
    assert len((ROOT / "README.md").read_bytes()) < 15 * 1024


def test_every_setting_is_used() -> None:
    code = "\n".join(
        p.read_text()
        for p in [*ROOT.joinpath("bridge").rglob("*.py"), *ROOT.joinpath("jobs").rglob("*.py")]
    )
    unused = {name for name in Settings.model_fields if not re.search(rf"\.{name}\b", code)}
    assert unused == set()
