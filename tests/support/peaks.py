"""Peak memory of one step run in a fresh interpreter, as Airflow runs a task and as a user
runs ``tilescope``: the step's script prints a JSON line with its figures
(:func:`tilescope.stack.procs.peak_rss_mb`) last."""

from __future__ import annotations

import json
import subprocess
import sys


def step_peak(script: str, spec: dict) -> dict:
    """Run ``script`` in a fresh interpreter (``sys.argv[1]``: ``spec`` as JSON) and return
    its last line, parsed."""
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(spec)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
