"""Property-based requests generated from the gateway's own OpenAPI schema (schemathesis), sent
to the running gateway with a deployment on a fake vLLM: no answer may be a server error."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings

EXAMPLES = 10


def test_no_server_errors_for_generated_requests(served) -> None:
    app = served.gateway.http.app
    schema = schemathesis.openapi.from_dict(app.openapi())
    checked = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/metrics":
            continue

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def call(case: schemathesis.Case) -> None:
            response = case.call(base_url=served.url, timeout=10)
            assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.text)

        call()
        checked += 1
    assert checked >= 15
