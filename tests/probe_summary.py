"""docs/results/robustness.json: the headline of the two robustness probes, from their reports.

    .venv/bin/python -m tests.probe_memory      # -> docs/results/robustness-memory.json
    ZD_PROBE_CASES=10000 ZD_PROBE_REPORT=docs/results/robustness-schemathesis.json \\
        .venv/bin/python -m pytest -q tests/test_probe.py
    .venv/bin/python -m tests.probe_summary     # -> docs/results/robustness.json

The detailed reports stay beside it; this file keeps the figures issue 10 asks for, as totals
over both services, with the per-service numbers and the commands that made them.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path("docs/results")


def summarize(memory: dict, probe: dict) -> dict:
    """One flat summary of the memory probe's and schemathesis' reports."""
    return {
        "schemathesis_cases": probe["schemathesis_cases"]["total"],
        "server_errors": probe["server_errors"]["total"],
        "schema_violations": probe["schema_violations"]["total"],
        "peak_rss_over_idle_edge": memory["peak_rss_over_idle_edge"],
        "peak_rss_over_idle_record": memory["peak_rss_over_idle_record"],
        "per_service": {
            service: {
                "schemathesis_cases": probe["schemathesis_cases"][service],
                "server_errors": probe["server_errors"][service],
                "schema_violations": probe["schema_violations"][service],
                "idle_rss_mb": memory["idle_rss_mb"][service],
                "peak_rss_mb": memory["peak_rss_mb"][service],
            }
            for service in ("edge", "record")
        },
        "bombs_per_kind_per_service": memory["bombs_per_kind_per_service"],
        "bomb_kinds": memory["bomb_kinds"],
        "chunked_body_bytes": memory["chunked_body_bytes"],
        "commands": {
            "memory": memory["command"],
            "schemathesis": probe["command"],
            "summary": "python -m tests.probe_summary",
        },
        "details": ["robustness-memory.json", "robustness-schemathesis.json"],
    }


def main() -> None:
    memory = json.loads((RESULTS / "robustness-memory.json").read_text())
    probe = json.loads((RESULTS / "robustness-schemathesis.json").read_text())
    out = RESULTS / "robustness.json"
    out.write_text(json.dumps(summarize(memory, probe), indent=2) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
