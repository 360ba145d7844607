"""Numbers and times out of range are a 4xx with a reason, never a 500 (issue 10, defect 6):
SQLite overflows past 2**63 - 1 and PostgreSQL's INTEGER past 2**31 - 1."""

from __future__ import annotations

import httpx

from zerodefect.problems import MAX_INT

from .people import client_for
from .test_record import part, record  # noqa: F401 (the fixture)

HUGE = (MAX_INT + 1, 2**63, 2**64, 10**30)


def test_huge_ids_offsets_and_times_are_refused_with_a_reason(record) -> None:  # noqa: F811
    url, key_a, _, app = record
    assert httpx.post(f"{url}/v1/inspections", json=part("k-bounds-01", "B1"), headers={"X-API-Key": key_a})
    reviewer = client_for(app, url, "reviewer")
    for n in HUGE:
        answers = [
            reviewer.get("/v1/inspections", params={"offset": n}),
            reviewer.get(f"/v1/inspections/{n}"),
            reviewer.get(f"/v1/inspections/{n}/reviews"),
            reviewer.get(f"/v1/inspections/{n}/overlay.png"),
            reviewer.post(f"/v1/inspections/{n}/reviews", json={"decision": "confirmed"}),
            reviewer.post(f"/v1/alerts/{n}/acknowledge"),
            reviewer.post(f"/v1/alerts/{n}/resolve"),
            reviewer.get("/v1/alerts", params={"limit": n}),
        ]
        for answer in answers:
            assert answer.status_code == 422, (answer.request.url, answer.status_code, answer.text)
            assert answer.json()["detail"][0]["loc"][-1] in ("offset", "inspection_id", "alert_id", "limit")
    # The largest id that fits is just not there.
    assert reviewer.get(f"/v1/inspections/{MAX_INT}").status_code == 404
    assert reviewer.post(f"/v1/alerts/{MAX_INT}/resolve").status_code == 404
    # A time with no UTC equivalent is refused where it comes in, as a query or in a part.
    early = "0001-01-01T00:00:00+14:00"
    answer = reviewer.get("/v1/inspections", params={"since": early})
    assert answer.status_code == 422 and "out of range" in answer.json()["detail"][0]["msg"]
    posted = httpx.post(
        f"{url}/v1/inspections",
        json=part("k-bounds-02", "B2", captured_at=early),
        headers={"X-API-Key": key_a},
    )
    assert posted.status_code == 422 and posted.json()["detail"][0]["loc"] == ["body", "captured_at"]
    assert reviewer.get("/v1/inspections").json()["total"] == 1
    reviewer.close()
