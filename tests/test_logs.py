"""The function's log setup: a LOG_LEVEL that is not a level does not stop the function."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.harness import ROOT


def test_a_bogus_log_level_falls_back_to_info_with_a_warning() -> None:
    code = ("import logging; from function import logs; logs.setup(); "
            "logging.getLogger('function').info('still logging'); "
            "logging.getLogger('function').debug('hidden')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "LOG_LEVEL": "bogus"}, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["level"] for line in lines] == ["warning", "info"]  # debug stays hidden
    assert "LOG_LEVEL='BOGUS' is not a log level; using INFO" in lines[0]["msg"]
    assert lines[1]["msg"] == "still logging"
