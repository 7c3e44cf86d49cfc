"""The cache repair's windows (products/cache_repair.py): a pass every interval reads back
FAST_MARGIN before the previous pass; every COMMIT_MARGIN one reads back COMMIT_MARGIN
before the previous such pass. So every row a transaction wrote at ``t`` and committed
before ``t + COMMIT_MARGIN`` is read by some pass after its commit, and no row is re-read
at every pass for a whole minute."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orderstack.cache.inprocess import InProcessProductCache
from orderstack.cache.port import CachedProduct
from orderstack.products.cache_repair import COMMIT_MARGIN, FAST_MARGIN, CacheRepair
from orderstack.products.caching import DatabaseEpoch

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
TTL = timedelta(seconds=300)


def _windows(interval: float, passes: int) -> list[tuple[datetime, datetime]]:
    """(pass start, since) of each pass, the clock moving ``interval`` seconds a pass."""
    now = [START]

    async def nothing(since: datetime | None, after_id: int, limit: int) -> list[CachedProduct]:
        return []

    async def epoch() -> str:
        return "e"

    repair = CacheRepair(
        nothing,
        InProcessProductCache(),
        DatabaseEpoch(epoch),
        ttl=TTL,
        interval=interval,
        clock=lambda: now[0],
    )
    windows = []
    for _ in range(passes):
        windows.append((now[0], repair.window()))
        now[0] += timedelta(seconds=interval)
    return windows


def test_the_first_pass_reads_everything_the_cache_may_hold() -> None:
    [(started, since)] = _windows(5, 1)
    assert since == started - TTL


def test_every_pass_reaches_back_a_fast_margin_and_a_slow_one_every_commit_margin() -> None:
    windows = _windows(5, 40)
    reach = [started - since for started, since in windows[1:]]
    slow = [r for r in reach if r > timedelta(seconds=5) + FAST_MARGIN]
    assert reach.count(timedelta(seconds=5) + FAST_MARGIN) >= len(reach) - len(slow)
    assert 2 <= len(slow) <= 4  # about every COMMIT_MARGIN in 200 s, not every pass
    assert all(r <= 2 * COMMIT_MARGIN + timedelta(seconds=5) for r in slow)


def test_every_row_committed_within_the_commit_margin_is_read_after_its_commit() -> None:
    windows = _windows(5, 80)
    for written in range(0, 300, 7):  # a row written at t and committed up to a minute later
        t = START + timedelta(seconds=written)
        for delay in (0, 3, 9, 30, 59):
            committed = t + timedelta(seconds=delay)
            assert any(started >= committed and since <= t for started, since in windows), (
                written,
                delay,
            )


def test_rows_are_read_a_few_times_each_not_at_every_pass_for_a_minute() -> None:
    windows = _windows(5, 80)
    t = START + timedelta(seconds=100)
    reads = sum(1 for started, since in windows if since <= t <= started)
    assert reads <= 5  # one window of COMMIT_MARGIN at every pass: 13
