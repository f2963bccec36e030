"""Import direction (issue 17 item 2): digipoort/app.py imports opsmetrics, never the
other way round — opsmetrics takes what it needs (settings, pool) as arguments."""

from __future__ import annotations

import subprocess
import sys


def test_opsmetrics_does_not_import_the_app() -> None:
    code = "import sys, digipoort.opsmetrics; print('digipoort.app' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "False"
