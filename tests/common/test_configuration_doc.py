"""docs/configuration.md lists every TUNELAB_* variable: generated from the settings classes, and
no variable named anywhere in the services' code is missing from it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"


def test_the_doc_is_current_with_the_settings_classes() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_config_doc.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_variable_the_code_names_is_documented() -> None:
    documented = set(re.findall(r"`(TUNELAB_[A-Z0-9_<>*]+)`", DOC.read_text(encoding="utf-8")))
    patterns = [
        re.compile(re.escape(d).replace(r"<SERVICE>", "[A-Z]+").replace(r"\*", ".+")) for d in documented
    ]
    named: set[str] = set()
    for path in (ROOT / "services").rglob("*.py"):
        if "/v1/" in path.as_posix():
            continue  # generated stubs
        named |= set(re.findall(r"\bTUNELAB_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(encoding="utf-8")))
    missing = sorted(v for v in named if not any(p.fullmatch(v) for p in patterns))
    assert not missing, f"not in docs/configuration.md: {missing} (add them to scripts/gen_config_doc.py)"
