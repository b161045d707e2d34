"""An independent compliance check: does `training.feed` hold exactly what the rule allows?

`python -m stream verify` rebuilds the current state from the raw inputs
(`content.events`, `accounts.profiles`, `accounts.objections`), applies its own,
deliberately simple implementation of the contract, reads the compacted
`training.feed` and the filter's deferred changelog (`eligibility.deferred`: the
items it holds), and reports every difference:

- violations: a feed item the rule refuses, with the rule's reason, or
  `unknown_content`, `content_deleted` (the item's latest applied event is a
  delete), `unreadable_update` (an unreadable record named the item after that
  event); and `held_after_release`: a live held item the filter must have released;
- losses: an item the rule allows that is missing from the feed;
- minimisation problems: feed values that carry more, or other, than the
  contract's minimised fields.

What it checks, as the contract says it:
- order per item (an item is an author's content id): the latest *applied* event
  counts. An event with that event's id, or an older `event_time`, is superseded;
  after a delete every later event is (deletes are final); an equal `event_time`
  with another id applies, in offset order. Skipped events change nothing;
- unreadable records fail closed: a content record that does not parse but whose
  key is an id (1..256 characters) and whose value is a JSON object with a
  `content_id` id names an item. After the item's latest applied event (offset
  order; the same key keeps them in one partition) it takes the item off the feed
  and releases its held copy; it does not change the latest applied event, so only
  a newer readable event puts the item back. A date after year `MAX_YEAR` is
  unreadable (a profile then counts as unknown, an objection as objected), and a
  policy outside minimum age `MINIMUM_AGE_RANGE` or notice period
  `NOTICE_PERIOD_DAYS_RANGE` is refused, so the rule's date arithmetic never leaves
  the calendar;
- deferred decisions: a live held copy must be of the item's latest applied
  upsert, with no unreadable record since, and refused for the notice period alone
  by the author's current state (or allowed: then it is due and published next);
- nothing a record holds makes the verifier raise: every byte string, JSON value,
  nesting depth and record timestamp is data (`broker_time` clamps timestamps).

Independence is the point: a bug in the filter must not be repeated here. This
package must not import `stream.core.policy`, `stream.core.engine`, `stream.core.codec` or
`stream.core.records` (nor `stream.core.models`): it parses the wire format with orjson and
reads the policy TOML itself. It may use `stream.config` (settings, topic names)
and `stream.errors` (the error root). The deferred changelog's key (the filter's
item id: the author's length in UTF-8 bytes as 2 bytes big-endian, the author, the
content id) and value (`{"due_ms": ..., "content": {...}}`) are read as a wire format.

Layout, one module per job: a pure part (`inputs` parses the records, `state` is
what they build, `rule` reads the policy and judges, `compare` diffs the feed and
the held items against them, `report` renders the result: no clock, no I/O) and a
thin shell (`verify` reads Kafka, `main_verify` runs it once or continuously and
serves Prometheus gauges from its own registry; `errors` holds `VerifyError`).

Choices the contract leaves open, and why:
- the filter forgets an item's latest applied event `STREAM_ITEM_MEMORY_DAYS` (8)
  after it applied it, by its own clock; the verifier has no such clock and forgets
  when the next event's broker timestamp is more than that after the latest
  applied one's (`State.item_memory`, from the same setting). The two agree while
  the filter keeps up. A filter that applied the latest event late remembers it
  longer, so an event arriving more than the memory after it, which the filter
  skips, may be applied here and reported as a loss or a violation: that takes a
  copy delivered over a week late, and the report names the item to look at;
- an unreadable profile update leaves the account unknown and an unreadable
  objection update counts as an objection (fail closed, as the filter does). Simply
  ignoring them would make the verdict depend on whether compaction already removed
  the previous valid record;
- the compacted topics keep only each account's latest state, so a missing item
  whose author's profile or objection record is not older than the item's latest
  upsert (by broker timestamp, within `CLOCK_SLACK`) may rightly stay retracted
  ("items retracted earlier stay retracted until a new upsert"): it is `excused`,
  reported but not failing;
- `grace_seconds` (default 0 once, 60 continuously) holds back differences whose
  cause is younger than the grace as `pending`: the filter may not have caught up;
- the end offsets of the feed and the deferred changelog are taken before the
  inputs', so every feed or held record read was caused by inputs that are read too;
- a feed item made from an older upsert than the item's latest eligible one is
  `stale`: reported, not failing (the contract names no such guarantee);
- once time retention has removed content events, a feed item without one cannot
  be called `unknown_content`: its author (found through the pseudonym) and the feed
  record's own fields are still judged, and if they pass it is `unverifiable`; a
  held copy without its events is judged by itself the same way.
"""

from __future__ import annotations
