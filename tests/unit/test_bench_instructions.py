"""bench.instructions reads callgrind_annotate's output as it prints it (no valgrind needed here)."""

from __future__ import annotations

import pytest

from bench import instructions

# Lines as callgrind_annotate 3.19 prints them with --inclusive=yes, the neighbours that
# share a prefix or a suffix with the two functions included.
ANNOTATED = """\
--------------------------------------------------------------------------------
Ir
--------------------------------------------------------------------------------
3,254,338,090 (100.0%)  PROGRAM TOTALS
1,272,058,280 (39.09%)  build/__native_stream_core.c:CPyPy_engine___Engine___process [/w/core.so]
1,272,051,002 (39.09%)  build/__native_stream_core.c:CPyDef_engine___Engine___process [/w/core.so]
1,266,386,011 (38.91%)  build/__native_stream_core.c:CPyDef_engine___Engine____process [/w/core.so]
  287,393,443 ( 8.83%)  build/__native_stream_core.c:CPyDef_accounts___AccountChanges___apply [/w/core.so]
   12,000,000 ( 0.37%)  build/__native_stream_core.c:CPyDef_accounts___AccountChanges___apply_all [/w/core.so]
"""
PRINTED = (
    "10000 content events, 5000 accounts: best 1282.9 us/event, median 1282.9 us/event; "
    "loading 5058 state records: best 999.0 us/record\n"
)


def test_counts_are_the_engine_less_the_loading_per_event_and_the_loading_per_record() -> None:
    figures = instructions.counts(ANNOTATED, PRINTED)

    assert figures.per_event == (1_272_051_002 - 287_393_443) / 10_000
    assert figures.per_record == 287_393_443 / 5058


def test_an_uncompiled_core_is_said_not_counted_as_zero() -> None:
    # Run on the plain Python sources, the core's functions have no names of their own in the profile.
    with pytest.raises(ValueError, match="make compile"):
        instructions.counts("3,254,338,090 (100.0%)  PROGRAM TOTALS\n", PRINTED)


def test_a_run_that_printed_no_workload_is_refused() -> None:
    with pytest.raises(ValueError, match="workload"):
        instructions.counts(ANNOTATED, "")
