"""Property-based fuzzing of both APIs from their own OpenAPI schemas (schemathesis):
no 5xx, every response matches the schema, invalid input gets a 4xx.
ORDERSTACK_FUZZ_EXAMPLES sets the cases per operation (the suite's default is small).

Schema-valid requests may still be refused on business grounds (an order for a product that
does not exist is a 400 by contract), so schemathesis' "valid data is accepted" check is off;
every other check, including that invalid data gets a 4xx, is on."""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from harness.stack import Stack

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("ORDERSTACK_FUZZ_EXAMPLES", "40"))


def fuzz(schema_url: str, headers: dict[str, str] | None = None, examples: int = EXAMPLES) -> int:
    """Run every operation of the schema with generated inputs (sending ``headers``: a
    bearer token, say); return the cases run. (schemathesis' own pytest plugin does not
    load under this pytest, so the operations are driven directly with hypothesis.)"""
    schema = schemathesis.openapi.from_url(schema_url)
    ran = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if _streams(operation.definition.raw):
            continue  # an endless answer: tests/e2e/test_order_status_streams.py attacks it

        @given(case=operation.as_strategy())
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def call(case: schemathesis.Case) -> None:
            nonlocal ran
            ran += 1
            case.call_and_validate(
                headers=headers, timeout=10, excluded_checks=[positive_data_acceptance]
            )

        call()
    return ran


def _streams(operation: dict[str, Any]) -> bool:
    """Whether an operation answers a Server-Sent Events stream (``text/event-stream``),
    which never ends by itself: a case would wait out its read timeout each time."""
    answers = operation.get("responses", {}).values()
    return any("text/event-stream" in answer.get("content", {}) for answer in answers)


def test_order_api_never_fails_on_any_input(stack: Stack) -> None:
    assert fuzz(f"{stack.order_url}/openapi.json") >= EXAMPLES


def test_product_api_never_fails_on_any_input(stack: Stack) -> None:
    assert fuzz(f"{stack.product_url}/openapi.json") >= EXAMPLES
