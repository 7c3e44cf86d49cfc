"""aiormq's frame queues are widened by an explicit, version-checked call, never at import."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import aiormq
import pytest

from orderstack.messaging import rabbitmq
from orderstack.messaging.rabbitmq import (
    KNOWN_AIORMQ_VERSIONS,
    UnsupportedAiormqVersion,
    tune_aiormq,
)

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"


@pytest.fixture(autouse=True)
def restore_aiormq(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a test tunes is put back afterwards."""
    monkeypatch.setattr(aiormq.Connection, "FRAME_BUFFER_SIZE", aiormq.Connection.FRAME_BUFFER_SIZE)
    channel = aiormq.Connection.channel
    monkeypatch.setattr(channel, "__defaults__", channel.__defaults__)


def channel_frame_buffer_default() -> object:
    return inspect.signature(aiormq.Connection.channel).parameters["frame_buffer_size"].default


def test_an_unknown_aiormq_version_fails_loudly_and_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rabbitmq, "installed_aiormq_version", lambda: "99.0.0")
    before = (aiormq.Connection.FRAME_BUFFER_SIZE, channel_frame_buffer_default())

    with pytest.raises(UnsupportedAiormqVersion, match=r"aiormq 99\.0\.0"):
        tune_aiormq(4096)

    assert (aiormq.Connection.FRAME_BUFFER_SIZE, channel_frame_buffer_default()) == before


def test_a_known_version_whose_internals_moved_fails_loudly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def channel(self: object, channel_number: int | None = None) -> None: ...

    monkeypatch.setattr(aiormq.Connection, "channel", channel)  # no frame_buffer_size any more

    with pytest.raises(UnsupportedAiormqVersion, match="frame buffer"):
        tune_aiormq(4096)


def test_tuning_sets_the_connection_and_channel_buffers_and_is_idempotent() -> None:
    tune_aiormq(4096)
    tune_aiormq(4096)

    assert aiormq.Connection.FRAME_BUFFER_SIZE == 4096
    assert channel_frame_buffer_default() == 4096
    # Only the frame buffer's default moved: the others keep theirs.
    params = inspect.signature(aiormq.Connection.channel).parameters
    assert (params["channel_number"].default, params["publisher_confirms"].default) == (None, True)


def test_the_pinned_aiormq_is_one_the_tuning_knows() -> None:
    pinned = re.search(r'"aiormq==([^"]+)"', PYPROJECT.read_text())

    assert pinned is not None
    assert pinned.group(1) in KNOWN_AIORMQ_VERSIONS
    assert rabbitmq.installed_aiormq_version() in KNOWN_AIORMQ_VERSIONS


def test_importing_the_adapter_leaves_aiormq_alone() -> None:
    code = (
        "import aiormq, orderstack.infrastructure, orderstack.messaging.rabbitmq; "
        "print(aiormq.Connection.FRAME_BUFFER_SIZE)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout

    assert out.strip() == "10"
