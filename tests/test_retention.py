"""privacy.retention_days: what the stores on disk may keep, and for how long."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from agent import checkpoint
from agent.config import parse_config
from agent.outbox import Outbox
from tests.test_sdnotify import _config


def test_dead_letters_older_than_the_limit_are_purged(tmp_path: Path) -> None:
    now = [1_000_000.0]
    with Outbox(tmp_path / "agent.db", clock=lambda: now[0]) as box:
        for i in range(3):
            with box.batch():
                row = box.enqueue(f"venue/v/moment/z/k{i}", {"n": i}, seq_stream="guaranteed")
            assert box.dead_letter(row, "refused")
            now[0] += 3600.0
        assert box.dead_letter_count() == 3
        assert box.purge_dead_letters(before=1_000_000.0 + 3600.0) == 1  # the oldest
        assert box.dead_letter_count() == 2


def test_a_checkpoint_past_the_limit_is_deleted_not_restored(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from agent.runtime import Agent

    cfg = parse_config(_config(tmp_path) + "\n[privacy]\nretention_days = 1\n")
    first = Agent(cfg)
    first.tick(first.clock())
    checkpoint.save(cfg.checkpoint_path, first.core.checkpoint())
    first.outbox.close()
    old = time.time() - 2 * 86400
    os.utime(cfg.checkpoint_path, (old, old))
    second = Agent(cfg)
    second.outbox.close()
    assert not cfg.checkpoint_path.exists()
    assert "older than privacy.retention_days" in caplog.text
