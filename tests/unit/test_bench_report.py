"""The benchmark report's targets table (bench/report.py) and the objection run's background rate.

Each test builds a small results dict, as bench/run.py and bench/objections.py record it,
and reads the row of one target: its figure and its verdict (met, missed, n/a).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import objections, report

MET, MISSED, NA = report.MET, report.MISSED, report.NA


def _consumer(eps: int | None, cpu: float | None, *, completed: bool = True) -> dict[str, Any]:
    return {
        "consumer": "x",
        "completed": completed,
        "events_per_second": eps,
        "cpu_seconds_per_million": cpu,
        "cpu_utilisation": 0.9,
        "first_output_after_start_s": 2.0,
        "peak_rss_mib": 190.0,
        "outputs": {"decisions": 1000, "dlq": 5, "feed": 300},
        "system": {"system_cpu_percent": 50.0},
        "output_per_second": [100, 200, 300],
    }


def _drain(events: int, accounts: int, **consumers: dict[str, Any]) -> dict[str, Any]:
    label = f"{events}x{accounts}"
    return {
        label: {
            "label": label,
            "config": {
                "events": events,
                "accounts": accounts,
                "seed": 42,
                "partitions": 4,
                "objectors_at_start": accounts // 50,
                "objector_share": 0.02,
                "malformed_share": 0.005,
                "records": {"bench-t.content.events": events, "bench-t.accounts.profiles": accounts},
                "preload_seconds": 1.0,
                "preload_records_per_second": 40_000,
            },
            "consumers": consumers,
            "feeds": {"identical": True, "distinct_records": {}, "live_items_after_compaction": {}},
        }
    }


def _step(target: int, achieved: int, *, bounded: bool, kept_up: bool = True) -> dict[str, Any]:
    return {
        "target": target,
        "achieved": achieved,
        "generator_kept_up": kept_up,
        "bounded": bounded,
        "end_lag": 100,
        "max_lag": 1000,
        "lag_slope_per_s": 1.0,
        "worker_cpu_utilisation": 0.8,
        "drained_after_seconds": 1.0,
        "lag_series": [[0.0, 10], [1.0, 20]],
    }


def _rate(steps: list[dict[str, Any]], sustainable: int | None, limited_by: str) -> dict[str, Any]:
    return {
        "steps": steps,
        "sustainable": sustainable,
        "accounts": 5000,
        "system": {"system_cpu_percent": 60.0},
        "limited_by": limited_by,
    }


def _stats(p99: float) -> dict[str, Any]:
    return {
        "count": 1000,
        "p50_ms": 5.0,
        "p90_ms": 8.0,
        "p99_ms": p99,
        "p99_9_ms": 30.0,
        "max_ms": 40.0,
        "mean_ms": 6.0,
    }


def _latency(rate: int, p99: float) -> dict[str, Any]:
    return {
        "rate": rate,
        "seconds": 60,
        "warmup_seconds": 5.0,
        "sent_content": 1000,
        "generator_behind_max_ms": 3.0,
        "matched": 1000,
        "unmatched_sent": 0,
        "unmatched_decisions": 0,
        "steady": _stats(p99),
        "all": _stats(p99),
        "cdf": [[50, 5.0], [99, p99]],
        "backlog_at_start": 0,
    }


def _soak(events: int, growth_mib: float) -> dict[str, Any]:
    # Ten tenths of the events, each sampled twice; from the second tenth on the peak rises by `growth_mib`.
    series = [
        [int(events * (k / 10 + d)), 100.0 if k < 2 else 100.0 + growth_mib] for k in range(10) for d in (0.0, 0.05)
    ]
    series.append([events, 100.0])
    return {
        "events_target": events,
        "events_processed": events,
        "accounts": 20_000,
        "rss_at_ready_mib": 90.0,
        "rss_min_mib": 90.0,
        "rss_max_mib": 100.0 + growth_mib,
        "rss_start_mib": 100.0,
        "rss_end_mib": 100.0,
        "rss_after_warmup_mib": 100.0,
        "rss_max_after_warmup_mib": 100.0 + growth_mib,
        "growth_after_warmup_percent": growth_mib,
        "seconds": 100.0,
        "events_per_second": events // 100,
        "series": series,
        "completed": True,
    }


def _objections(p99: float, leaks: int, rate: float, source: str, sustainable: int | None) -> dict[str, Any]:
    return {
        "objections": 220,
        "measured": 220,
        "without_tombstones": 0,
        "p50_ms": 8.0,
        "p99_ms": p99,
        "max_ms": p99 + 5,
        "mean_ms": 9.0,
        "leaks": leaks,
        "rate": rate,
        "rate_source": source,
        "sustainable": sustainable,
    }


def _row(r: dict[str, Any], starts: str) -> tuple[str, str, str, str]:
    rows = [row for row in report.targets(r) if row[0].startswith(starts)]
    assert len(rows) == 1, report.targets(r)
    return rows[0]


# -- drain against the Quix peer ------------------------------------------------------


def test_quix_rows_come_from_the_largest_drain_that_ran_worker_and_quix_back_to_back() -> None:
    r = {
        "drains": {
            # The largest drain has no Quix peer; the faster figures of the smaller one are the ones compared.
            **_drain(1_000_000, 1_000_000, worker=_consumer(12_000, 70.0), raw=_consumer(20_000, 40.0)),
            **_drain(500_000, 100_000, worker=_consumer(20_000, 40.0), quix=_consumer(10_000, 120.0)),
            **_drain(20_000, 20_000, worker=_consumer(5_000, 90.0), quix=_consumer(9_000, 100.0)),
        }
    }
    speed = _row(r, "drain, one worker process >= 1.0x the Quix peer's events/s (stretch 1.5x)")
    assert speed[1:] == (
        "2.00x (20,000 vs 10,000 events/s); stretch 1.5x met",
        MET,
        "Drain 500000x100000",
    )
    cpu = _row(r, "drain CPU per event")
    assert "0.35x the Quix peer's" in cpu[0]
    assert cpu[1:] == ("0.33x (40.0 vs 120.0 CPU-s per 1M events)", MET, "Drain 500000x100000")


@pytest.mark.parametrize(
    ("worker", "quix", "figure", "verdict"),
    [
        (12_000, 10_000, "1.20x (12,000 vs 10,000 events/s); stretch 1.5x not met", MET),
        (9_000, 10_000, "0.90x (9,000 vs 10,000 events/s); stretch 1.5x not met", MISSED),
    ],
)
def test_the_drain_speed_verdict_is_against_one_times_the_peer_and_the_figure_says_whether_the_stretch_is_met(
    worker: int, quix: int, figure: str, verdict: str
) -> None:
    r = {"drains": _drain(1_000_000, 1_000_000, worker=_consumer(worker, 50.0), quix=_consumer(quix, 120.0))}
    assert _row(r, "drain, one worker process")[1:3] == (figure, verdict)


def test_worker_cpu_per_event_above_a_third_of_the_peers_misses() -> None:
    r = {"drains": _drain(1_000_000, 1_000_000, worker=_consumer(20_000, 58.5), quix=_consumer(10_000, 123.4))}
    assert _row(r, "drain CPU per event")[1:3] == ("0.47x (58.5 vs 123.4 CPU-s per 1M events)", MISSED)


def _repeat(eps: int, cpu: float, *, completed: bool = True, same: bool = True) -> dict[str, Any]:
    return {"completed": completed, "events_per_second": eps, "cpu_seconds_per_million": cpu, "feed_identical": same}


def test_repeated_drains_judge_the_pair_on_each_ones_median_not_on_its_first_drain() -> None:
    r = {"drains": _drain(1_000_000, 1_000_000, worker=_consumer(20_000, 44.0), quix=_consumer(9_000, 126.0))}
    # The first pair alone meets the CPU target (0.35x); the medians (43.0 vs 115.0, 0.37x) do not.
    r["drains"]["1000000x1000000"]["repeats"] = {
        "worker": [_repeat(21_000, 43.0), _repeat(22_000, 42.0), _repeat(1, 1.0, completed=False)],
        "quix": [_repeat(9_500, 115.0), _repeat(9_200, 114.0)],
    }
    row = _row(r, "drain CPU per event")
    assert row[1:3] == (
        "0.37x (43.0 vs 115.0 CPU-s per 1M events); medians of alternating drains: "
        "worker 44.0, 43.0, 42.0; Quix 126.0, 115.0, 114.0",
        MISSED,
    )
    speed = _row(r, "drain, one worker process")
    assert speed[1].startswith("2.28x (21,000 vs 9,200 events/s); stretch 1.5x met; medians of alternating drains")


def test_repeated_drains_are_listed_in_the_drain_section_with_their_feed_comparison(doc: Path) -> None:
    results = _quick_results()
    results["drains"]["20000x20000"]["repeats"] = {
        "worker": [_repeat(9_100, 61.0)],
        "quix": [_repeat(4_000, 150.0, same=False)],
    }
    report.render(results)
    text = doc.read_text()
    assert "| worker (`python -m stream worker`) | 1 | 9,100 | 61.00 | n/a | identical |" in text
    assert "| peer: Quix Streams (`bench/baseline_quix.py`) | 1 | 4,000 | 150 | n/a | **DIFFERENT** |" in text


def test_a_quix_peer_that_did_not_complete_or_measure_is_not_measured() -> None:
    failed = {"consumer": "quix", "completed": False, "error": "boom"}
    for quix in (failed, _consumer(None, None)):
        r = {"drains": _drain(20_000, 20_000, worker=_consumer(5_000, 90.0), quix=quix)}
        assert _row(r, "drain, one worker process")[1:] == ("not measured", NA, "Drain (worker and quix)")
        assert _row(r, "drain CPU per event")[1:3] == ("not measured", NA)


# -- latency and sustainable rate ---------------------------------------------------------


def _ladder_to(sustainable: int) -> dict[str, Any]:
    return _rate(
        [_step(sustainable, sustainable, bounded=True), _step(sustainable + 2000, sustainable + 2000, bounded=False)],
        sustainable,
        "worker",
    )


@pytest.mark.parametrize(("p99", "verdict"), [(14.9, MET), (15.0, MET), (15.1, MISSED)])
def test_latency_p99_target_is_15_ms_at_half_the_sustainable_rate(p99: float, verdict: str) -> None:
    r = {"rate": _ladder_to(12_000), "latency": _latency(6000, p99)}
    row = _row(r, "e2e p99 <= 15 ms at half the sustainable rate")
    assert row[1] == f"p99 {p99:,.2f} ms at 6,000/s"
    assert row[2:] == (verdict, "End-to-end latency")


def test_latency_row_lists_each_runs_p99_when_there_are_several() -> None:
    lat = {**_latency(6000, 14.0), "runs": [{"p99_ms": x} for x in (13.2, 14.0, 16.9)]}
    row = _row({"rate": _ladder_to(12_000), "latency": lat}, "e2e p99")
    assert row[1:3] == ("p99 14.00 ms at 6,000/s (median of 3 runs: 13.2, 14.0, 16.9 ms)", MET)


def _floor(p50: float, p99: float) -> dict[str, Any]:
    floor = {"steady": {**_stats(p99), "p50_ms": p50}, "matched": 1000}
    floor |= {"sent_to_decision_created": _stats(p99), "decision_created_to_reader": _stats(2.0)}
    runs = [{"run": 1, "generator_behind_max_ms": 2.0, **_stats(p99)}]
    return {**floor, "runs": runs, "reported_run": 1}


def _with_floors(lat: dict[str, Any]) -> dict[str, Any]:
    return {**lat, "floor": _floor(3.0, 9.5), "floor_ordered": _floor(4.0, 11.0)}


def test_latency_row_names_the_floors_of_the_same_runs_and_judges_the_worker_alone() -> None:
    lat = _with_floors(_latency(6000, 16.0))
    row = _row({"rate": _ladder_to(12_000), "latency": lat}, "e2e p99")
    assert row[1:3] == (
        "p99 16.00 ms at 6,000/s; floors in the same runs, nothing decided: one hop p99 9.50 ms, "
        "the crash-safe order's steps p99 11.00 ms",
        MISSED,
    )


def test_latency_section_gives_the_floors_and_what_the_worker_adds_to_each(doc: Path) -> None:
    results = _quick_results()
    results["latency"] = {**_with_floors(_latency(2500, 12.0)), "reported_run": 1, "runs": []}
    report.render(results)
    section = doc.read_text().split("## End-to-end latency", 1)[1].split("\n## ", 1)[0]
    one_hop = "- one hop, its median run (run 1): p50 3.0 ms, p99 9.5 ms; the worker's median run adds 2.0 ms at p50"
    assert one_hop + " and 2.5 ms at p99." in section
    ordered = "- the crash-safe order, its median run (run 1): p50 4.0 ms, p99 11.0 ms; the worker's median run adds"
    assert ordered + " 1.0 ms at p50 and 1.0 ms at p99." in section
    assert "| floor, the crash-safe order: steady | 1,000 | 4.0 ms |" in section
    assert "| the crash-safe order | 1 | 5.0 ms | 11.0 ms |" in section


def test_latency_at_another_rate_than_half_the_sustainable_one_gets_no_verdict() -> None:
    r = {"rate": _ladder_to(12_000), "latency": _latency(2500, 10.0)}
    row = _row(r, "e2e p99")
    assert row[2] == NA
    assert "not half the sustainable rate recorded (12,000/s)" in row[1]
    alone = _row({"latency": _latency(2500, 10.0)}, "e2e p99")  # `bench latency --latency-rate` without a ladder
    assert alone[2] == NA
    assert "no sustainable rate recorded" in alone[1]


def test_sustainable_rate_limited_by_the_worker_is_met_or_missed_against_12000() -> None:
    met = _row({"rate": _ladder_to(12_000)}, "sustainable rate >= 12,000 events/s")
    assert met[1:] == ("12,000 events/s; the next step, 14,000/s, was not bounded", MET, "Sustainable rate")
    missed = _row({"rate": _ladder_to(10_000)}, "sustainable rate")
    assert missed[1:3] == ("10,000 events/s; the next step, 12,000/s, was not bounded", MISSED)


def test_a_bounded_step_measured_within_1_percent_of_its_target_ran_at_its_target() -> None:
    # The smoke run measured 998/s sent in its 1,000/s step: sampling, not a slower generator.
    rate = _rate([_step(12_000, 11_976, bounded=True), _step(14_000, 14_000, bounded=False)], 11_976, "worker")
    assert _row({"rate": rate}, "sustainable rate")[1:3] == (
        "11,976 events/s; measured in the bounded 12,000/s step, within 1 % of it: the step's rate counts; "
        "the next step, 14,000/s, was not bounded",
        MET,
    )
    below = _rate([_step(12_000, 11_800, bounded=True), _step(14_000, 14_000, bounded=False)], 11_800, "worker")
    assert _row({"rate": below}, "sustainable rate")[1:3] == (
        "11,800 events/s; sent in the 12,000/s step; the next step, 14,000/s, was not bounded",
        MISSED,
    )


def test_a_sustainable_rate_the_generator_capped_is_a_lower_bound_without_verdict_below_the_target() -> None:
    steps = [_step(8000, 8000, bounded=True), _step(10_000, 9_000, bounded=True, kept_up=False)]
    row = _row({"rate": _rate(steps, 9000, "generator")}, "sustainable rate")
    assert row[1] == (
        ">= 9,000 events/s; sent in the 10,000/s step; a lower bound: "
        "the generator reached only 9,000/s of the 10,000/s step"
    )
    assert row[2] == report.LOWER_BOUND
    assert row[2].startswith("n/a")


def test_a_lower_bound_at_or_above_the_target_is_met() -> None:
    steps = [_step(16_000, 16_000, bounded=True), _step(20_000, 13_000, bounded=True, kept_up=False)]
    row = _row({"rate": _rate(steps, 16_000, "generator")}, "sustainable rate")
    assert row[1].startswith(">= 16,000 events/s; a lower bound")
    assert row[2] == MET


def test_a_quick_ladder_that_ran_out_of_steps_is_a_lower_bound() -> None:
    steps = [_step(x, x, bounded=True) for x in (1000, 2000, 5000)]
    row = _row({"rate": _rate(steps, 5000, "ladder end")}, "sustainable rate")
    assert row[1:3] == (
        ">= 5,000 events/s; a lower bound: every step was bounded, up to the ladder's last, 5,000/s",
        report.LOWER_BOUND,
    )


def test_no_bounded_step_misses_when_the_first_step_is_under_the_target() -> None:
    row = _row({"rate": _rate([_step(2000, 2000, bounded=False)], None, "worker")}, "sustainable rate")
    assert row[1:3] == ("no step bounded: below the first step, 2,000/s", MISSED)


# -- objections ---------------------------------------------------------------------------


OBJECTIONS = "objection propagation p99 <= 20 ms at 80 % of the sustainable rate, 0 leaks"


@pytest.mark.parametrize(("p99", "verdict"), [(19.0, MET), (20.0, MET), (25.0, MISSED)])
def test_objection_propagation_at_80_percent_of_the_sustainable_rate(p99: float, verdict: str) -> None:
    r = {"rate": _ladder_to(12_000), "objections": _objections(p99, 0, 9600.0, "sustainable", 12_000)}
    row = _row(r, OBJECTIONS)
    assert row[1] == (
        f"p99 {p99:.1f} ms, 0 leaks (220 of 220 objections measured) at 9,600/s background (80 % of 12,000/s)"
    )
    assert row[2:] == (verdict, "Objection propagation")


def test_an_objection_leak_misses_at_any_rate() -> None:
    r = {"objections": _objections(5.0, 1, 300.0, "option", None)}
    assert _row(r, OBJECTIONS)[2] == MISSED


def test_objections_off_the_80_percent_rate_get_no_verdict() -> None:
    given = _row({"objections": _objections(5.0, 0, 4000.0, "option", None)}, OBJECTIONS)
    assert given[2] == NA
    assert given[1].endswith("(given by --rate)")
    default = _row({"objections": _objections(5.0, 0, 2000.0, "default", None)}, OBJECTIONS)
    assert default[2] == NA
    assert default[1].endswith("(no sustainable rate was recorded)")
    # The ladder ran again after the objection run: its rate is no longer 80 % of the recorded one.
    stale = {"rate": _ladder_to(14_000), "objections": _objections(5.0, 0, 9600.0, "sustainable", 12_000)}
    row = _row(stale, OBJECTIONS)
    assert row[2] == NA
    assert "the rate ladder recorded 14,000/s since" in row[1]


def test_the_objection_run_takes_80_percent_of_the_recorded_sustainable_rate() -> None:
    chosen = objections.background(None, {"rate": _ladder_to(12_000)})
    assert (chosen.rate, chosen.source, chosen.sustainable) == (9600.0, "sustainable", 12_000)
    assert chosen.describe() == "9,600 content events/s (80 % of the sustainable rate, 12,000/s)"
    assert objections.background(None, {"rate": _ladder_to(8_333)}).rate == 6666.0


def test_the_objection_runs_rate_option_overrides_and_without_a_ladder_it_defaults() -> None:
    given = objections.background(4000.0, {"rate": _ladder_to(12_000)})
    assert (given.rate, given.source) == (4000.0, "option")
    for results in ({}, {"rate": _rate([_step(2000, 2000, bounded=False)], None, "worker")}):
        default = objections.background(None, results)
        assert (default.rate, default.source) == (objections.DEFAULT_RATE, "default")
    assert objections.background(None, {"rate": _ladder_to(12_000)}, quick=True).rate == objections.QUICK_RATE
    with pytest.raises(ValueError, match="--rate must be a positive"):
        objections.background(0.0, {})


def test_the_objection_run_records_its_result_into_results_json_and_keeps_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench import common
    from bench import run as harness

    monkeypatch.setattr(harness, "RESULTS", tmp_path / "results.json")
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    harness.save({"rate": _ladder_to(12_000)})
    harness.record("objections", _objections(12.0, 0, 9600.0, "sustainable", 12_000))
    saved = harness.load_results()
    assert saved["rate"]["sustainable"] == 12_000
    assert saved["objections"]["p99_ms"] == 12.0
    assert _row(saved, OBJECTIONS)[2] == MET


def test_a_tools_block_replaces_its_last_version_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = tmp_path / "benchmarks.md"
    monkeypatch.setattr(report, "DOC", doc)
    doc.write_text("# Benchmarks\n\nthe report\n\n<!-- objections:begin -->\nold\n<!-- objections:end -->\n")
    report.write_block("<!-- rebalance:begin -->\nfirst\n<!-- rebalance:end -->")  # absent: appended
    report.write_block("<!-- objections:begin -->\nnew\n<!-- objections:end -->")
    report.write_block("<!-- rebalance:begin -->\nsecond\n<!-- rebalance:end -->")
    assert doc.read_text() == (
        "# Benchmarks\n\nthe report\n\n<!-- objections:begin -->\nnew\n<!-- objections:end -->\n\n"
        "<!-- rebalance:begin -->\nsecond\n<!-- rebalance:end -->\n"
    )
    with pytest.raises(ValueError, match="not a block"):
        report.write_block("<!-- rebalance:begin -->\nno end")


# -- memory and the earlier rows ----------------------------------------------------------


def test_memory_over_the_10m_soak() -> None:
    flat = _row({"soak": _soak(10_000_000, 5.0)}, "memory flat within 10 % over the 10M soak")
    assert flat[2:] == (MET, "Soak: memory")
    assert "+5.0 %" in flat[1]
    assert _row({"soak": _soak(10_000_000, 12.0)}, "memory")[2] == MISSED
    short = _row({"soak": _soak(200_000, 5.0)}, "memory")
    assert short[2] == NA
    assert short[1].endswith("a soak of 200,000 events, not 10,000,000")


def test_results_without_the_new_keys_give_not_measured_rows_and_keep_the_earlier_verdicts() -> None:
    old = {
        "drains": {
            **_drain(1_000_000, 1_000_000, worker=_consumer(12_946, 77.4), raw=_consumer(19_701, 48.7)),
            **_drain(
                1_000_000,
                200_000,
                worker=_consumer(10_452, 94.0),
                raw=_consumer(15_444, 61.8),
                faust=_consumer(1_126, 882.0),
            ),
        },
        "startup": {"state_on_disk_seconds": [2.1, 2.0, 2.2], "state_on_disk_median": 2.1, "accounts": 1_000_000},
    }
    rows = {row[0]: row for row in report.targets(old)}
    assert len(rows) == 9
    for name in (
        "drain, one worker process >= 1.0x the Quix peer's events/s (stretch 1.5x)",
        "e2e p99 <= 15 ms at half the sustainable rate",
        "sustainable rate >= 12,000 events/s",
        OBJECTIONS,
        "memory flat within 10 % over the 10M soak",
    ):
        assert rows[name][1:3] == ("not measured", NA)
    assert rows["worker >= 0.5x raw aiokafka baseline"][1:] == (
        "0.66x (12,946 vs 19,701 events/s)",
        MET,
        "Drain 1000000x1000000",
    )
    assert rows["worker >= 5x naive Faust"][2:] == (MET, "Drain 1000000x200000")
    assert rows["restart to ready with state on disk <= 10 s"][2] == MET
    assert all(row[1] == "not measured" and row[2] == NA for row in report.targets({}))


# -- rendering ----------------------------------------------------------------------------


@pytest.fixture
def doc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Render into a scratch directory, never over docs/benchmarks.md."""
    monkeypatch.setattr(report, "DOC", tmp_path / "docs" / "benchmarks.md")
    monkeypatch.setattr(report, "PLOT", tmp_path / "docs" / "benchmarks.png")
    monkeypatch.setattr(report, "ROOT", tmp_path)
    monkeypatch.setattr(report, "NOTES", tmp_path / "notes.md")
    return tmp_path / "docs" / "benchmarks.md"


def _quick_results() -> dict[str, Any]:
    return {
        "meta": {"mode": "quick", "config": {"events": 20_000}, "machine": {"nproc": 2}},
        "drains": _drain(20_000, 20_000, worker=_consumer(9000, 60.0), raw=_consumer(15_000, 40.0)),
        "rate": _rate([_step(x, x, bounded=True) for x in (1000, 2000, 5000)], 5000, "ladder end"),
        "latency": _latency(2500, 12.0),
        "startup": {
            "state_on_disk_seconds": [2.1, 2.0, 2.2],
            "state_on_disk_median": 2.1,
            "wiped_seconds": 4.0,
            "rss_after_rebuild_mib": 80.0,
            "accounts": 20_000,
        },
        "soak": _soak(200_000, 3.0),
    }


def test_render_names_the_allocator_the_consumers_ran_on(doc: Path) -> None:
    results = _quick_results()
    results["meta"]["machine"]["allocator"] = "libjemalloc.so.2"

    report.render(results)

    assert "- memory allocator of every consumer process: libjemalloc.so.2" in doc.read_text()


def test_render_writes_the_targets_and_what_make_bench_runs(doc: Path) -> None:
    report.render(_quick_results())
    text = doc.read_text()
    table = text[text.index("## Targets") : text.index("## Drain")]
    assert "**A quick run:**" in table
    assert "| sustainable rate >= 12,000 events/s | >= 5,000 events/s; a lower bound" in table
    assert f"| {report.LOWER_BOUND} | Sustainable rate |" in table
    assert "| e2e p99 <= 15 ms at half the sustainable rate | p99 12.00 ms at 2,500/s | **met** |" in table
    assert f"| {OBJECTIONS} | not measured | n/a | Objection propagation |" in table
    assert "<= 50 ms" not in text
    how = text[text.index("## How to run") : text.index("## This run")]
    assert "python -m bench all --fresh" in how
    assert "python -m bench.objections        #   objection propagation at 80 % of that run's sustainable" in how
    assert "python -m bench report" in how


def test_render_keeps_working_on_old_results_and_carries_the_objections_block_over(doc: Path) -> None:
    doc.parent.mkdir(parents=True)
    block = "<!-- objections:begin -->\n## Objection propagation (issue 4)\nkept\n<!-- objections:end -->"
    doc.write_text("# Benchmarks\n\nold\n\n" + block + "\n")
    old = {
        "meta": {"mode": "full"},
        "drains": _drain(1_000_000, 1_000_000, worker=_consumer(12_946, 77.4), raw=_consumer(19_701, 48.7)),
    }
    report.render(old)
    text = doc.read_text()
    assert block in text
    assert "| worker >= 0.5x raw aiokafka baseline | 0.66x (12,946 vs 19,701 events/s) | **met** |" in text
    assert "**A quick run:**" not in text
