"""The evidence report's pure part: dates, the pairing of objections with retractions, the verdict, the HTML."""

from __future__ import annotations

import datetime as dt
import http.server
import re
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from stream.compliance import evidence
from stream.compliance.evidence import EvidenceError, Period, Read, Rec
from stream.config import Settings

ROOT = Path(__file__).resolve().parents[2]
UTC = dt.UTC
T0 = dt.datetime(2026, 12, 1, tzinfo=UTC)
MS0 = int(T0.timestamp() * 1000)
PERIOD = Period(T0, T0 + dt.timedelta(hours=1))


def test_objective_constants_equal_the_alert_rules() -> None:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules.yml").read_text())
    exprs = [r.get("expr", "") for g in rules["groups"] for r in g["rules"]]
    slow = [e for e in exprs if "slow_ratio" not in e and "objection_propagation_seconds_bucket{le=" in e]
    assert slow and all(f'le="{evidence.OBJECTIVE_SECONDS:g}"' in e for e in slow)
    burn = [e for e in exprs if "slow_ratio_rate1h >" in e]
    assert burn and f"* {1 - evidence.OBJECTIVE_SHARE:.2f})" in burn[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01", T0),
        ("2026-12-01T00:00:00Z", T0),
        ("2026-12-01T01:30:00+01:30", T0),
        ("2026-12-01T00:00:00.250Z", T0 + dt.timedelta(milliseconds=250)),
    ],
)
def test_parse_instant_dates_and_zoned_times_are_utc(text: str, expected: dt.datetime) -> None:
    assert evidence.parse_instant(text, "--since") == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("yesterday", "expected a date"),
        ("2026-02-30", "expected a date"),
        ("", "expected a date"),
        ("2026-12-01T10:00:00", "give the time zone"),
        ("1969-12-31", "before 1970"),
    ],
)
def test_parse_instant_bad_text_is_an_error_naming_the_option(text: str, message: str) -> None:
    with pytest.raises(EvidenceError, match=message) as caught:
        evidence.parse_instant(text, "--since")
    assert str(caught.value).startswith("--since")


def test_make_period_defaults_until_to_now_and_refuses_empty_or_future_periods() -> None:
    now = T0 + dt.timedelta(days=2)
    assert evidence.make_period("2026-12-01", None, now) == Period(T0, now)
    with pytest.raises(EvidenceError, match="not before"):
        evidence.make_period("2026-12-01", "2026-12-01", now)
    with pytest.raises(EvidenceError, match="in the future"):
        evidence.make_period("2026-12-01", "2026-12-05", now)


def _objection(ms: int, account: str, status: str, offset: int) -> Rec:
    return Rec(MS0 + ms, 0, offset, account.encode(), {"account_id": account, "status": status})


def _decision(ms: int, action: str, *, reason: str | None = None, cause: str | None = None, author: str = "a") -> Rec:
    value = {"action": action, "reason": reason, "cause": cause, "author_id": author, "policy_version": "v1"}
    return Rec(MS0 + ms, 0, ms, b"c", value)


def test_propagation_pairs_each_objection_with_its_authors_retractions_until_the_next_record() -> None:
    read = Read(
        decisions=[
            _decision(1_100, "retract", cause="objection"),
            _decision(1_300, "retract", cause="objection"),  # the last of the first objection's: 300 ms
            _decision(1_200, "retract", cause="content_deleted"),  # another cause: not this objection's
            _decision(5_050, "retract", cause="objection"),  # the second objection's: 50 ms
            _decision(1_400, "retract", cause="objection", author="b"),  # another author
            _decision(3_700_000, "retract", cause="objection", author="late"),  # after `until`: still closes it
        ],
        objections=[
            _objection(1_000, "a", "objected", 0),
            _objection(3_000, "a", "withdrawn", 1),
            _objection(5_000, "a", "objected", 2),
            _objection(2_000, "quiet", "objected", 3),  # nothing on the feed
            _objection(3_599_000, "late", "objected", 4),
            _objection(-5_000, "before", "objected", 5),  # before the period
        ],
    )
    p = evidence.propagation(read, PERIOD)
    assert (p.objections, p.withdrawals, p.without_retractions) == (4, 1, 1)
    assert sorted(p.seconds) == [0.05, 0.3, 101.0]
    assert p.quantile(0.5) == 0.3 and p.quantile(0.99) == 101.0
    assert p.within_objective == 1 and p.meets_objective is False


def test_propagation_nearest_rank_quantiles_and_the_objective() -> None:
    p = evidence.Propagation(100, 0, 0, tuple(i / 1000 for i in range(1, 101)))  # 1..100 ms
    assert (p.quantile(0.5), p.quantile(0.99), p.quantile(1.0)) == (0.05, 0.099, 0.1)
    assert p.meets_objective is True
    slow = evidence.Propagation(100, 0, 0, (*[0.01] * 98, 0.3, 0.4))
    assert slow.share_within == 0.98 and slow.meets_objective is False
    assert evidence.Propagation(0, 0, 0, ()).meets_objective is None


def _tallies(read: Read | None = None) -> evidence.Tallies:
    return evidence.tally(read or Read(), PERIOD)


VERIFIER_OK: dict[str, Any] = {
    "ok": True,
    "feed_items": 3,
    "checked_at": "2026-12-01T01:00:00Z",
    "violations": {"count": 0, "by_reason": {}},
    "losses": {"count": 0, "examples": []},
    "minimisation_problems": {"count": 0},
    "retraction_problems": {"count": 0},
}


def test_verdict_needs_the_verifier_and_fails_on_any_failing_check() -> None:
    assert evidence.verdict(_tallies(), VERIFIER_OK, None).compliant is True
    assert evidence.verdict(_tallies(), None, None).compliant is None
    failed = {**VERIFIER_OK, "ok": False, "violations": {"count": 2, "by_reason": {}}}
    v = evidence.verdict(_tallies(), failed, None)
    assert v.compliant is False and "2 violations" in v.reasons[0]
    canaries = evidence.Monitoring("http://p", evidence.Canaries(1, 5, 0.1), None, None, None)
    assert evidence.verdict(_tallies(), VERIFIER_OK, canaries).compliant is False
    slow = Read(
        decisions=[_decision(2_000, "retract", cause="objection")], objections=[_objection(0, "a", "objected", 0)]
    )
    assert evidence.verdict(_tallies(slow), VERIFIER_OK, None).compliant is False


def _evidence(read: Read) -> evidence.Evidence:
    settings = Settings(bootstrap_servers="b:9092")
    return evidence.build(
        evidence.tally(read, PERIOD),
        {},
        PERIOD,
        settings=settings,
        now=PERIOD.until,
        verifier=VERIFIER_OK,
        verifier_note="ran",
        monitoring=None,
    )


def test_render_html_is_self_contained_escaped_and_free_of_account_ids() -> None:
    read = Read(
        decisions=[
            _decision(10, "decide", reason="eligible", author="acct-secret-1"),
            _decision(20, "decide", reason="<script>alert(1)</script>", author="acct-secret-2"),
            _decision(30, "skip", reason="superseded", author="acct-secret-3"),
        ],
        dead_letters=[Rec(MS0 + 40, 0, 0, b"acct-secret-4", {"reason": "malformed_json", "topic": "content.events"})],
        objections=[_objection(50, "acct-secret-5", "objected", 0)],
    )
    e = _evidence(read)
    page = evidence.render_html(e, dict.fromkeys(evidence.FIGURES, b"\x89PNG"))
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert not re.search(r"<link\b|src=\"http|url\(", page)
    assert page.count('src="data:image/png;base64,') == len(evidence.FIGURES)
    assert "acct-secret" not in page
    assert page.index("Compliant") < page.index("<h2>1. Policy versions")
    numbers = evidence.figures_json(e)
    assert numbers["decisions"] == {
        "total": 2,
        "eligible": 1,
        "by_reason": {"<script>alert(1)</script>": 1, "eligible": 1},
    }
    assert "acct-secret" not in orjson.dumps(numbers).decode()


def test_figures_are_png_for_every_name_and_an_empty_period() -> None:
    drawn = evidence.figures(_tallies(), PERIOD)
    assert set(drawn) == set(evidence.FIGURES)
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in drawn.values())


def test_missing_matplotlib_is_an_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    with pytest.raises(EvidenceError, match=r"pip install 'eligibility-filter\[evidence\]'"):
        evidence.figures(_tallies(), PERIOD)


def test_pyproject_offers_matplotlib_as_the_evidence_extra() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = project["optional-dependencies"]["evidence"]
    assert len(extra) == 1 and extra[0].startswith("matplotlib==")
    assert extra[0] in project["optional-dependencies"]["dev"]


# -- Prometheus: a stand-in answering the API's query endpoint ---------------------------


@pytest.fixture
def prometheus() -> Iterator[tuple[str, list[str], dict[str, float]]]:
    """A stand-in of Prometheus' /api/v1/query: answers the first configured series a query names."""
    queries: list[str] = []
    answers: dict[str, float] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)["query"][0]
            queries.append(query)
            hit = next((v for k, v in answers.items() if k in query), None)
            result = [] if hit is None else [{"metric": {}, "value": [0, str(hit)]}]
            body = orjson.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", queries, answers
    finally:
        server.shutdown()
        server.server_close()


def test_prometheus_canaries_over_the_period_or_not_available(
    prometheus: tuple[str, list[str], dict[str, float]],
) -> None:
    url, queries, answers = prometheus
    nothing = evidence.query_prometheus(url, PERIOD)
    assert nothing.canaries is None and nothing.verifier is None
    assert all("[3600s]" in q or "[3600s:" in q for q in queries)
    answers.update({"eligibility_canary_failures_total": 2, "eligibility_canary_propagation_seconds_count": 40})
    found = evidence.query_prometheus(url, PERIOD)
    assert found.canaries is not None and found.canaries.failures == 2 and found.canaries.propagations == 40
    v = evidence.verdict(_tallies(), VERIFIER_OK, found)
    assert v.compliant is False and "canaries failed 2 times" in " ".join(v.reasons)


def test_prometheus_bad_url_or_no_answer_is_an_error() -> None:
    with pytest.raises(EvidenceError, match="http:// or https://"):
        evidence.query_prometheus("file:///etc/passwd", PERIOD)
    with pytest.raises(EvidenceError, match="cannot be read"):
        evidence.query_prometheus("http://127.0.0.1:9", PERIOD)
