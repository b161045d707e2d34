"""Every environment variable the package reads is in the README, and every one the README names is read.

An operator sets the worker up from the README alone (its configuration tables): a
setting that exists only in the code is one they cannot find, and one that exists only
in the README is one that silently does nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The names of settings: the contract's `KAFKA_BOOTSTRAP_SERVERS`, the client's security
# settings, and the project's `STREAM_...`. A name ending in `_` is a prefix
# (`STREAM_PSEUDONYM_` starts the key variables' names).
NAME = re.compile(r"\b(?:STREAM|KAFKA)_[A-Z0-9_]*[A-Z0-9]\b")


def read_by(root: Path) -> dict[str, set[str]]:
    """Each setting named as a string literal in the Python files below `root`, with the files that name it."""
    found: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        for literal in re.findall(r"\"([^\"\n]*)\"", path.read_text(encoding="utf-8")):
            for name in NAME.findall(literal):
                found.setdefault(name, set()).add(str(path.relative_to(root)))
    return found


def documented() -> set[str]:
    return set(NAME.findall((ROOT / "README.md").read_text(encoding="utf-8")))


def test_every_setting_the_package_reads_is_in_the_readme() -> None:
    missing = {name: files for name, files in read_by(ROOT / "stream").items() if name not in documented()}
    assert missing == {}


def test_every_setting_the_readme_names_is_read_by_the_package_or_the_broker_script() -> None:
    # scripts/kafka.sh reads the local broker's own settings (KAFKA_PORT, KAFKA_HEAP, ...).
    script = set(NAME.findall((ROOT / "scripts" / "kafka.sh").read_text(encoding="utf-8")))
    read = set(read_by(ROOT / "stream")) | script
    assert documented() - read == set()


def test_the_check_finds_settings_read_as_literals_and_prefixes(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(
        'import os\nLIMIT = os.environ.get("STREAM_NOT_IN_ANY_README", "1")\n'
        'KEYS = [k for k in os.environ if k.startswith("STREAM_PSEUDONYM_")]\n'
        'NOTE = "set KAFKA_BOOTSTRAP_SERVERS first"\n',
        encoding="utf-8",
    )
    assert read_by(tmp_path) == {
        "STREAM_NOT_IN_ANY_README": {"m.py"},
        "KAFKA_BOOTSTRAP_SERVERS": {"m.py"},
    }
    assert "STREAM_NOT_IN_ANY_README" not in documented()
