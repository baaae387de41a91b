"""No credentials in the repository: every tracked text file is scanned for the shapes real
secrets take (AWS access key ids, private key blocks, secret keys and passwords given as
long literal values). Test and demo credentials are short dummies ("testing") or generated
at run time (make run writes SeaweedFS's keys into its state directory, never into git)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN (?:RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----"),
    # a secret-looking name assigned a long literal (≥ 20 chars of key alphabet)
    "secret literal": re.compile(
        r"""(?i)(?:secret(?:_access)?_key|password|passwd|api_key|token)["']?\s*[:=]\s*"""
        r"""["']([A-Za-z0-9/+=_\-]{20,})["']"""),
}


def tracked_text_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                               check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout ({exc}): nothing tracked to scan")
    files = []
    for name in names:
        path = REPO / name
        if path.is_file() and path.stat().st_size < 2_000_000:
            data = path.read_bytes()
            if b"\0" not in data[:4096]:
                files.append(path)
    return files


def test_patterns_catch_real_looking_secrets() -> None:
    # assembled at run time, so this file holds no credential-shaped literal of its own
    key_id = "AKIA" + "IOSFODNN7" + "EXAMPLE"
    secret = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"
    assert PATTERNS["AWS access key id"].search(f"key = {key_id}")
    assert PATTERNS["secret literal"].search(f'aws_secret_access_key="{secret}"')
    assert PATTERNS["secret literal"].search('"pass' + 'word": "correct-horse-battery-staple"')
    assert not PATTERNS["secret literal"].search('"password": "testing"')


def test_no_secrets_in_tracked_files() -> None:
    files = tracked_text_files()
    assert len(files) > 50
    found = []
    for path in files:
        text = path.read_text(errors="replace")
        for kind, pattern in PATTERNS.items():
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.relative_to(REPO)}:{line}: {kind}")
    assert not found, "credentials in the repository:\n" + "\n".join(found)
