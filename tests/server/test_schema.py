"""Schemathesis against the live gateway's own /openapi.json: generated requests for every operation (valid and
invalid ones, bounded per operation) get no 5xx, only documented statuses and content types, and bodies that
match the documented response schemas."""

from __future__ import annotations

import collections

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.server.conftest import inproc_gateway

EXAMPLES = 12  # per operation: the test stays under a minute on 2 cores


@pytest.fixture(scope="module")
def live(tiny_bundle, tmp_path_factory):
    server = inproc_gateway(tiny_bundle, tmp_path_factory.mktemp("schema"))  # API only: in-process
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api_schema(live):
    return schemathesis.openapi.from_url(f"{live.http_url}/openapi.json")


def test_every_operation_keeps_its_schema(api_schema):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 20
    statuses: collections.Counter = collections.Counter()
    for operation in operations:  # one bounded hypothesis run per operation, so each one gets its examples

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        def run(case):
            response = case.call(timeout=30)
            statuses[response.status_code] += 1
            case.validate_response(
                response,
                checks=[
                    not_a_server_error,
                    status_code_conformance,
                    content_type_conformance,
                    response_schema_conformance,
                ],
            )

        run()
    assert statuses[200] + statuses[201] + statuses[202] > 0 and sum(statuses.values()) >= 2 * len(operations), statuses
    print(dict(statuses))
