"""The dead-letter admin's scan (messaging/rabbitmq.py ``_scan``): each letter once, the
depth read at the start a floor and not a bound.

A busy broker answers a quorum queue's depth 0 when its query times out, though basic.get
still gives the messages (a listing right after another read "no dead letters" in make
test); a letter given back a moment ago may not be ready yet; a replayed letter that failed
again comes back behind the others. The queue here is a fake of aio-pika's queue port:
``get`` pops from a list, and given-back letters become ready only when told.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from orderstack.messaging import rabbitmq
from orderstack.messaging.rabbitmq import _scan


@dataclass
class Letter:
    message_id: str | None


@dataclass
class FakeQueue:
    ready: list[Letter]
    # (after how many empty answers, the letter that becomes ready then)
    later: list[tuple[int, Letter]] = field(default_factory=list)
    empty_answers: int = 0

    async def get(self, no_ack: bool = False, fail: bool = True) -> Letter | None:
        for when, letter in list(self.later):
            if self.empty_answers >= when:
                self.later.remove((when, letter))
                self.ready.append(letter)
        if self.ready:
            return self.ready.pop(0)
        self.empty_answers += 1
        return None


async def _scanned(queue: FakeQueue, count: int, kept: list[Any] | None = None) -> list[str | None]:
    return [m.message_id async for m in _scan(cast(Any, queue), count, kept)]


@pytest.fixture(autouse=True)
def short_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rabbitmq, "_REQUEUE_WAIT_SECONDS", 2.0)


def test_a_depth_read_as_zero_still_gives_every_letter() -> None:
    queue = FakeQueue([Letter("a"), Letter("b"), Letter("c")])
    assert asyncio.run(_scanned(queue, count=0)) == ["a", "b", "c"]
    assert queue.empty_answers == 1  # an empty answer past the depth read ends it at once


def test_an_empty_answer_before_the_depth_read_is_asked_again() -> None:
    queue = FakeQueue([Letter("a")], later=[(3, Letter("b"))])
    assert asyncio.run(_scanned(queue, count=2)) == ["a", "b"]
    assert queue.empty_answers == 4  # three before b came, one after: the queue is empty


def test_the_wait_for_letters_not_ready_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rabbitmq, "_REQUEUE_WAIT_SECONDS", 0.1)
    queue = FakeQueue([Letter("a")])
    assert asyncio.run(_scanned(queue, count=3)) == ["a"]
    assert queue.empty_answers > 1


def test_a_letter_back_again_past_the_depth_ends_the_scan_and_is_kept() -> None:
    again = Letter("a")
    queue = FakeQueue([Letter("a"), Letter("b"), again, Letter("c")])
    kept: list[Any] = []
    assert asyncio.run(_scanned(queue, count=2, kept=kept)) == ["a", "b"]
    assert kept == [again] and queue.ready == [Letter("c")]


def test_a_letter_without_an_id_past_the_depth_ends_a_replay_not_a_listing() -> None:
    anonymous = Letter(None)
    queue = FakeQueue([Letter(None), anonymous])
    kept: list[Any] = []
    assert asyncio.run(_scanned(queue, count=1, kept=kept)) == [None]
    assert kept == [anonymous]  # nothing to tell it from a replayed letter back again
    queue = FakeQueue([Letter(None), Letter(None), Letter("a"), Letter("a")])
    assert asyncio.run(_scanned(queue, count=0)) == [None, None, "a", "a"]
