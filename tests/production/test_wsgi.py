"""The documented production command on a configuration mistake: one line, no traceback."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import APP_SECRET, SECRET_KEY, VERIFY_TOKEN
from tests.production.helpers import ROOT, gunicorn_command


@pytest.mark.slow
def test_gunicorn_with_a_malformed_rule_stops_with_one_line(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rules]]\nname = "look"\non = "message"\nmatch = "(?=price)"\nevent = "LeadSubmitted"\n'
    )
    env = {
        **os.environ,
        "WACONV_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "WACONV_APP_SECRET": APP_SECRET,
        "WACONV_VERIFY_TOKEN": VERIFY_TOKEN,
        "WACONV_SECRET_KEY": SECRET_KEY,
        "WACONV_RULES_FILE": str(rules),
    }
    done = subprocess.run(
        gunicorn_command(port=0, workers=1),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    [line] = [x for x in output.splitlines() if x.startswith("error: ")]
    assert "rule 'look'" in line and "'match'" in line
