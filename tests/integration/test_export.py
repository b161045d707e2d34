"""`python -m stream export` and `python -m stream retractions` as a trainer runs them: real
processes, the real broker, no pseudonym key."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from stream.config import Settings
from stream.feed import FIELDS, ContentHash, Manifest, decode_item

from .harness import process_env, read_until, running_worker, unique_settings
from .test_feed import ELIGIBLE, LEAVES, _drained, _leave, _scenario

pytestmark = pytest.mark.integration


def _trainer(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """A command run as a trainer: the brokers and topic names, no pseudonym key, no development mode."""
    env = {k: v for k, v in process_env(settings).items() if k not in ("STREAM_DEV_MODE", "STREAM_PSEUDONYM_KEY")}
    return subprocess.run(
        [sys.executable, "-m", "stream", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _on_a_terminal(settings: Settings, *args: str) -> str:
    """What a command writes to stderr when stderr is a terminal (a pseudo-terminal here)."""
    env = {k: v for k, v in process_env(settings).items() if k not in ("STREAM_DEV_MODE", "STREAM_PSEUDONYM_KEY")}
    primary, secondary = pty.openpty()
    # A new pseudo-terminal is 0 columns wide, where tqdm draws an empty bar: give it a real width.
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream", *args], env=env, stdout=subprocess.DEVNULL, stderr=secondary
        )
        os.close(secondary)
        out = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # the terminal closed: the process has exited
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=120) == 0, out.decode(errors="replace")
        return out.decode(errors="replace")
    finally:
        os.close(primary)


async def test_export_writes_parquet_and_manifest_and_retractions_lists_what_left_since(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data")
    await _scenario(settings)
    async with running_worker(settings):
        await _drained(settings, "before")
        out = tmp_path / "dataset"
        exported = _trainer(settings, "export", "--out", str(out), "--progress")
        assert exported.returncode == 0, exported.stderr
        assert "exported 7 items" in exported.stdout
        assert "export: 100%" in exported.stderr and "7/7" in exported.stderr  # the progress bar, forced

        table = pq.read_table(out / "feed.parquet")
        assert table.column_names == list(FIELDS) and table.column_names[0] == "content_id"
        assert set(table.column("content_id").to_pylist()) == ELIGIBLE
        manifest_bytes = (out / "manifest.json").read_bytes()
        manifest = Manifest.from_json(manifest_bytes)
        assert manifest.to_json() == manifest_bytes and manifest.items == 7
        # The manifest's hash, recomputed from the file alone.
        rows = table.to_pylist()
        items = [decode_item(row["content_id"].encode(), orjson.dumps(row)) for row in rows]
        assert ContentHash.of(items) == manifest.content_hash

        again = _trainer(settings, "export", "--out", str(out))
        assert again.returncode == 2 and "already holds an export" in again.stderr
        quiet = _trainer(settings, "export", "--out", str(tmp_path / "quiet"))  # not a terminal: no bar
        assert quiet.returncode == 0 and "export:" not in quiet.stderr
        on_a_terminal = _on_a_terminal(settings, "export", "--out", str(tmp_path / "tty"))
        assert "export: 100%" in on_a_terminal and "aiokafka" not in on_a_terminal

        await _leave(settings)
        await read_until(settings, settings.topics.retractions, len(LEAVES))
        await _drained(settings, "after")

    listed = _trainer(settings, "retractions", "--since", str(out / "manifest.json"))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == sorted(LEAVES)
    as_json = _trainer(settings, "retractions", "--since", str(out / "manifest.json"), "--json")
    body = orjson.loads(as_json.stdout)
    assert body["content_ids"] == sorted(LEAVES) and body["causes"]["c-gb-2"] == "content_deleted"
    assert sum(body["offsets"].values()) == len(LEAVES)


def test_retractions_unreadable_manifest_is_a_clear_error(bootstrap: str, tmp_path: Path) -> None:
    settings = unique_settings(bootstrap, tmp_path / "data")
    (tmp_path / "manifest.json").write_text("{}")
    result = _trainer(settings, "retractions", "--since", str(tmp_path / "manifest.json"))
    assert result.returncode == 2 and "manifest format" in result.stderr
    missing = _trainer(settings, "retractions", "--since", str(tmp_path / "absent.json"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
