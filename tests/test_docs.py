"""The docs' Python examples run as written."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).parents[1]
DOCUMENTS = sorted(ROOT.glob("docs/*.md")) + [ROOT / "README.md"]


def python_blocks(path: pathlib.Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_python_examples_run(path):
    blocks = [b for b in python_blocks(path) if "# not run" not in b]
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(path), "exec"), namespace)
