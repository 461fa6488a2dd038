"""Fuzzing the HTTP API from the OpenAPI document it serves (schemathesis): no 5xx, no crash.

Bounded: a few dozen generated requests per operation and mode (valid and invalid bodies),
against the running service on the simulated pool.
"""

from __future__ import annotations

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

EXAMPLES = 25


def test_no_generated_request_makes_the_api_fail(live):
    doc = httpx.get(live + "/schema/openapi.json").json()
    body = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"model", "messages"} <= set(body["required"]) and body["properties"]["messages"]["items"]
    schema = schemathesis.openapi.from_url(live + "/schema/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    fuzzed = [op for op in operations if not op.path.startswith("/schema")]
    assert {op.path for op in fuzzed} >= {"/v1/chat/completions", "/v1/feedback", "/v1/models", "/metrics"}
    calls = 0
    for op in fuzzed:
        modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if op.body else (GenerationMode.POSITIVE,)
        for mode in modes:

            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            def fuzz(case: schemathesis.Case) -> None:
                nonlocal calls
                response = case.call(timeout=10)
                calls += 1
                case.validate_response(response, checks=[not_a_server_error])

            fuzz()
    assert calls >= EXAMPLES
