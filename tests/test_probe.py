"""The probe in the suite: schemathesis against both services' OpenAPI, over real HTTP (issue 10).

Each service runs under uvicorn on 127.0.0.1 with real credentials: the station's camera key
for the edge; a station key and a logged-in admin's session and CSRF token for the record. Every
operation gets its share of a bounded budget of generated cases (schema-valid and
schema-breaking ones), derandomized so a run repeats; any 5xx, and any answer outside the
documented contract (status code, content type, headers, body schema), fails the test.

The budget is `ZD_PROBE_CASES` cases per service (300 in the suite). The long run is by hand:

    ZD_PROBE_CASES=10000 ZD_PROBE_REPORT=docs/results/robustness-schemathesis.json \
        .venv/bin/python -m pytest -q tests/test_probe.py

which also writes the counts to the report file. The tests after the probes check the
smaller contract items: docs list the 4xx answers, /metrics is text, /readyz names no path,
and the review app sends its security headers.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import os
import shlex
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup

from zerodefect.edge.app import create_app as create_edge
from zerodefect.quality.app import create_app as create_record
from zerodefect.quality.models import Alert
from zerodefect.quality.store import add_station

from .bundles import REJECT_ALL, make_bundle
from .parts import T0, post_parts
from .people import PASSWORD, add_user
from .servers import serve
from .test_edge import KEY, station

CASES = int(os.environ.get("ZD_PROBE_CASES", "300"))
REPORT = os.environ.get("ZD_PROBE_REPORT")
# The probe's own logins come from another loopback address than its generated cases, so the
# login throttle that the generated wrong passwords provoke (per address) never locks it out.
OWN_ADDRESS = "127.0.0.2"
CONFORMANCE = [
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
]


@dataclass
class Tally:
    cases: int = 0
    server_errors: int = 0
    schema_violations: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def note(self, what: str) -> None:
        if len(self.examples) < 10:
            self.examples.append(what[:2000])


RESULTS: dict[str, Tally] = {}


def probe(url: str, budget: int, credentials: Callable[[str], dict]) -> Tally:
    """Run about `budget` generated cases over every operation of the service at `url`.

    Operations without parameters come first: their few distinct cases leave the rest of the
    budget to the operations with room to vary. Failures are counted, not raised at the first
    one, so the long run reports every finding."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    schema.config.update(base_url=url)
    operations = sorted(
        (result.ok() for result in schema.get_all_operations()),
        key=lambda op: (
            len(list(op.iter_parameters())) + (op.body is not None and len(op.body) > 0),
            op.label,
        ),
    )
    tally = Tally()
    for n, operation in enumerate(operations):
        share = max(1, math.ceil((budget - tally.cases) / (len(operations) - n) / 2))
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            # No case of a mode may exist (an operation without parameters has no bad ones).
            with contextlib.suppress(Unsatisfiable):
                probe_operation(
                    operation, mode, share, tally, functools.partial(credentials, operation.label)
                )
    return tally


def probe_operation(
    operation, mode: GenerationMode, share: int, tally: Tally, credentials: Callable[[], dict]
) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=share,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:
        tally.cases += 1
        extra = credentials()
        case.headers = {**(case.headers or {}), **extra.get("headers", {})}
        if isinstance(case.body, dict) and "station" in extra.get("body", {}):
            # Past the metadata checks (a clean serial, a capture time now, no free text), so
            # the generated image itself is what the station must judge or refuse.
            kept = {k: v for k, v in case.body.items() if k not in ("batch", "camera", "frame_id")}
            case.body = {**kept, **extra["body"]}
        response = case.call(cookies=extra.get("cookies"), timeout=60)
        tally.statuses[response.status_code] += 1
        if response.status_code >= 500:
            tally.server_errors += 1
            tally.note(f"{operation.label}: {response.status_code} {response.text[:300]}")
            return
        try:
            case.validate_response(response, checks=CONFORMANCE)
        except FailureGroup as group:
            tally.schema_violations += 1
            tally.note(f"{operation.label}: {group}")

    run()


def own_client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, transport=httpx.HTTPTransport(local_address=OWN_ADDRESS), timeout=30)


def log_in(url: str, username: str) -> tuple[dict, dict]:
    """(cookies, headers) of a fresh session of `username`."""
    with own_client(url) as client:
        answer = client.post("/v1/login", json={"username": username, "password": PASSWORD})
        answer.raise_for_status()
        return dict(client.cookies), {"X-CSRF-Token": answer.json()["csrf_token"]}


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The record (with parts, reviews and an alert to find) and an edge forwarding to it."""
    from zerodefect.settings import get_settings

    tmp = tmp_path_factory.mktemp("probe")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("ZD_DATA_DIR", str(tmp / "var"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'var' / 'mlflow.db'}")
    get_settings.cache_clear()
    record = create_record(get_settings())
    record.state.andon.stop()
    with record.state.sessions() as session:
        st, station_key = add_station(session, "st-probe", line="L1")
        session.add(Alert(station_id=st.id, rule="consecutive", breach="b1", message="5 rejects"))
        session.commit()
    add_user(record.state.sessions, "probe-admin", "admin")
    monkeypatch.setenv("ZD_RECORD_API_KEY", station_key)
    config = station(
        tmp, str(make_bundle(tmp / "bundle", REJECT_ALL)), station="st-probe", model_poll_seconds=None
    )
    with serve(record) as record_url:
        post_parts(record_url, station_key, "st-probe", "rrpr", T0)
        with serve(create_edge(config.model_copy(update={"record_url": record_url}))) as edge_url:
            yield {"record": record_url, "edge": edge_url, "station_key": station_key, "app": record}
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    if REPORT and RESULTS:
        body = {
            "schemathesis_cases": {name: t.cases for name, t in RESULTS.items()},
            "server_errors": {name: t.server_errors for name, t in RESULTS.items()},
            "schema_violations": {name: t.schema_violations for name, t in RESULTS.items()},
        }
        for key in ("schemathesis_cases", "server_errors", "schema_violations"):
            body[key]["total"] = sum(body[key].values())
        body["statuses"] = {name: dict(sorted(t.statuses.items())) for name, t in RESULTS.items()}
        body["schemathesis_version"] = schemathesis.__version__
        body["modes"] = "positive and negative, derandomized, per operation share of the budget"
        body["command"] = (
            f"ZD_PROBE_CASES={CASES} ZD_PROBE_REPORT={REPORT} "
            f"{shlex.join([os.path.relpath(sys.executable), '-m', 'pytest', '-q', 'tests/test_probe.py'])}"
        )
        Path(REPORT).parent.mkdir(parents=True, exist_ok=True)
        Path(REPORT).write_text(json.dumps(body, indent=2) + "\n")


def test_the_record_holds_under_the_probe(services) -> None:
    url = services["record"]
    cookies, csrf = log_in(url, "probe-admin")

    def credentials(label: str) -> dict:
        if label == "POST /v1/logout":  # a throwaway session: the probe's own one stays alive
            throwaway_cookies, throwaway_csrf = log_in(url, "probe-admin")
            return {"cookies": throwaway_cookies, "headers": throwaway_csrf}
        return {"cookies": cookies, "headers": {"X-API-Key": services["station_key"], **csrf}}

    tally = RESULTS["record"] = probe(url, CASES, credentials)
    assert tally.cases >= min(CASES, 200) * 0.9
    assert (tally.server_errors, tally.schema_violations) == (0, 0), "\n".join(tally.examples)


def test_the_edge_holds_under_the_probe(services) -> None:
    def credentials(label: str) -> dict:
        # Half the parts name this station, so their generated images reach the decoder; the
        # other half test the refusal of another station's name.
        turn = next(turns)
        now = datetime.now(UTC).isoformat()
        named = (
            {"body": {"station": "st-probe", "serial": f"P-{turn}", "captured_at": now}} if turn % 2 else {}
        )
        return {"headers": {"X-API-Key": KEY}, **named}

    turns = itertools.count()
    tally = RESULTS["edge"] = probe(services["edge"], CASES, credentials)
    assert tally.cases >= min(CASES, 200) * 0.9
    assert (tally.server_errors, tally.schema_violations) == (0, 0), "\n".join(tally.examples)


def test_the_docs_list_4xx_answers_and_the_real_shapes(services) -> None:
    record = httpx.get(f"{services['record']}/openapi.json").json()
    edge = httpx.get(f"{services['edge']}/openapi.json").json()
    for doc in (record, edge):
        for path, methods in doc["paths"].items():
            for method, op in methods.items():
                codes = set(op["responses"])
                if path not in ("/healthz", "/readyz", "/metrics"):
                    assert "401" in codes, (method, path, codes)
                if op.get("requestBody") or op.get("parameters"):
                    assert "422" in codes, (method, path, codes)
                if "422" in codes:
                    ref = op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/Invalid"), (method, path)
        assert "HTTPValidationError" not in json.dumps(doc)  # FastAPI's shape, not the app's
        issue = doc["components"]["schemas"]["Issue"]
        assert set(issue["required"]) == {"loc", "msg", "type"} and "input" not in issue["properties"]
    assert set(record["paths"]["/v1/inspections"]["post"]["responses"]) >= {"401", "403", "409", "413"}
    assert "429" in record["paths"]["/v1/login"]["post"]["responses"]
    assert list(edge["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert "415" in edge["paths"]["/v1/inspect"]["post"]["responses"]
    metrics = httpx.get(f"{services['edge']}/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    # The 422 really has the documented shape, without echoing the input.
    bad = httpx.post(f"{services['edge']}/v1/inspect", headers={"X-API-Key": KEY}, data={"serial": "S"})
    assert bad.status_code == 422 and all(set(i) == {"loc", "msg", "type"} for i in bad.json()["detail"])


def test_readyz_names_no_file_path(services) -> None:
    ready = httpx.get(f"{services['edge']}/readyz")
    assert ready.status_code == 200 and ready.json()["model"] == "test-model"
    assert "/" not in json.dumps(ready.json()), ready.text


def test_the_review_app_sends_its_security_headers(services) -> None:
    url = services["record"]
    cookies, _ = log_in(url, "probe-admin")
    for path in ("/login", "/review", "/dashboard", "/static/app.js", "/v1/inspections"):
        answer = httpx.get(f"{url}{path}", cookies=cookies)
        assert answer.status_code == 200, path
        csp = answer.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["x-content-type-options"] == "nosniff"
