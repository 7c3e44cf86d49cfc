"""Under overload, goodput stays near capacity and no client waits into a timeout: the bench's
open-loop generator offers far more orders than the stack settles (one order and one product
replica on MariaDB, everything on this box's cores), for a few seconds.

What the admission promises, checked from outside (admission.py): the refusals are quick
503 OVERLOADED with Retry-After, no request times out at the client, every answer comes
within a bound, every accepted order settles, and settling keeps up with intake (the settle
latency stays bounded: the accepted orders were not queued behind a backlog). Before it, a
fixed MAX_IN_FLIGHT of 1,024 never shed: at twice the capacity clients timed out after 10 s
and accepted orders waited seconds to settle. The figures (goodput against capacity) are
`make bench`'s; this short run checks the behaviour, with bounds loose enough for a loaded
CI box.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from harness.bench import BenchConfig, render, run_bench
from orderstack.config import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

OFFERED = 2400.0  # orders/s: about twice what two cores settle (600 to 1,300/s)
SECONDS = 10.0  # admission settles in within ~2 s: a shorter step lets that set the p99
# The promise is 1 s (make bench measures it); slack for a CI box shared with the two
# generators; orders of several lines made each order dearer (2.0-2.3 s seen at a 2 s
# bound). Without admission a 10 s step settled its last orders ~8 s late.
ANSWER_P99_MS = 3000.0
SETTLE_P99_MS = 4000.0
# The admission as shipped (tests/e2e/conftest.py relaxes it for the other tests' processes).
ADMISSION_DEFAULTS = {
    name: str(Settings.model_fields[name].default)
    for name in ("ADMISSION_TARGET_SECONDS", "ORDER_SETTLE_TARGET_SECONDS", "MAX_IN_FLIGHT")
}


def test_far_past_capacity_refusals_are_quick_and_accepted_orders_settle(tmp_path: Path) -> None:
    config = BenchConfig(
        rates=(OFFERED,),
        step_seconds=SECONDS,
        generators=2,
        products=20,
        ladder_seconds=0,
        out_dir=tmp_path,
        settle_timeout=120,
        service_env=ADMISSION_DEFAULTS,
    )
    results = asyncio.run(run_bench(config))
    print(render(results))
    (step,) = results["steps"]

    errors = dict(step["errors"])
    assert "TimeoutError" not in errors and "OSError" not in errors, errors
    assert errors.get("503", 0) > 0, f"nothing was refused at {OFFERED:g}/s: {errors}"
    assert set(errors) == {"503"}, errors  # refusals, never a failure of another kind
    assert step["accepted"] > 0
    assert step["answer_ms"]["p99"] < ANSWER_P99_MS, step["answer_ms"]
    assert step["settle_ms"]["p99"] < SETTLE_P99_MS, step["settle_ms"]
    assert step["stored"] >= step["accepted"]  # every 201 settled (plus any whose client left)
    assert results["violations"] == []
