"""README is the user's guide: the two set-up commands first, CI runs the second one unchanged."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SETUP = ("python3 -m pip install -q -e . && engine demo", "python3 -m pip install -q -e '.[dev]' && python3 -m pytest")


def test_the_two_setup_commands_come_first_and_ci_runs_the_second() -> None:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    assert [b.strip() for b in blocks[:2]] == list(SETUP)
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert ci[-1] == SETUP[1]
    assert any("apt-get install -y -q chromium" in line for line in ci)


def test_readme_links_to_docs_that_exist() -> None:
    readme = (REPO / "README.md").read_text()
    links = set(re.findall(r"\]\((docs/[^)#]+)", readme))
    assert {"docs/design.md", "docs/training.md", "docs/kernels.md", "docs/benchmarks.md"} <= links
    for link in links:
        assert (REPO / link).is_file(), link
