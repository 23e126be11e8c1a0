"""The documentation stands on its own: every name it points at exists, and it cites only itself."""

from __future__ import annotations

import importlib
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ARCHITECTURE = REPO / "docs" / "architecture.md"
FENCED = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
CODE_SPAN = re.compile(r"`([^`]+)`")
DOTTED = re.compile(r"\brkllm_mqtt(?:\.\w+)+")


def _referenced_names() -> list[str]:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    spans = FENCED.findall(text) + CODE_SPAN.findall(FENCED.sub("", text))
    return sorted({m.group(0) for span in spans for m in DOTTED.finditer(span)})


def _resolve(dotted: str) -> object:
    """Import the longest module prefix of `dotted`, then walk the rest as attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            target = getattr(target, attr)
        return target
    raise ModuleNotFoundError(dotted)


def test_the_architecture_page_names_many_functions():
    assert len(_referenced_names()) > 40


@pytest.mark.parametrize("dotted", _referenced_names())
def test_every_name_in_the_architecture_page_exists(dotted: str):
    _resolve(dotted)


# Documents the team keeps outside the repository; the code and docs cite public sources instead.
OUTSIDE = re.compile(r"design\.md|rkllm-api\.md|ha-mqtt\.md|peers\.md|reference/|\bfamil(?:y|ies) [A-F]\b")
# The Home Assistant tier's files are checked once their own cleanup lands (issue #8).
NOT_YET = ("ha_integration/", "tests/ha/")


def test_no_file_cites_a_document_outside_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    cited = []
    for name in files:
        path = REPO / name
        if name.startswith(NOT_YET) or name == "tests/test_docs.py" or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        cited += [f"{name}: {m.group(0)}" for m in OUTSIDE.finditer(text)]
    assert cited == []
