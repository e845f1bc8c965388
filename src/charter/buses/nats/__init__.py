"""The NATS JetStream bus: for when one machine is not enough.

URL: ``nats://[user:password@]host:port[,host:port...][?replicas=3&partitions=16]``.
Several servers name the nodes of one cluster (the client reconnects to another one when
a node goes away). ``replicas`` (default 1) is the stream's replication factor: use 3 for
a stream that matters (G7). ``partitions`` (default 16) is explained below.

The stream. One per charter: ``CHARTER_<SYSTEM>`` (upper-cased, anything but letters and
digits turned into ``_``), subjects ``charter.<system>.>``, file storage, a duplicate window
of two minutes (the ``Nats-Msg-Id`` header is the event id, so a relay that publishes a batch
again after a failure does not store an event twice), no age, count or size limit.
If the stream already exists, what is safe to change is updated (our subjects, the duplicate
window, the replicas); what is not (storage, retention, limits someone set) is left as it
is, with a warning in the log.

Retention: *limits*, and compaction by ``compact()``, not *interest*. Interest retention
looks like the definition of compaction ("forget what every consumer has acknowledged"),
but it forgets at the wrong moments for charter:

- JetStream (2.9) does not even store a message that no consumer's filter covers at the
  moment it is published, and forgets a message as soon as the consumers that exist then
  have acknowledged it. It knows only the consumers that exist, not the copies the charter
  declares: a copy that has not run yet, or whose consumer was deleted, would count for
  nothing, and lose what it has not applied.
- The charter's ``retention`` ("how long the bus keeps events that every copy has applied")
  is a grace period (for a charter being rolled out, for operators); interest retention has
  no grace at all.
- An age limit would drop events a copy has not applied, so there is none.

So the server never forgets on its own and ``compact(retention_s, copies)`` does what the
SQLite bus does: per entity, it takes the lowest position among the copies the charter
declares for it (their position notes, below; a declared copy without one, or with one
that cannot be read, keeps every event of its entity), finds (by binary search on the
stored timestamps) the newest of the entity's events at or below it that is older than the
retention, writes that sequence as the entity's *compacted* note
(``charter.<system>._note.compacted.<Entity>._``), and then purges the entity's subjects up
to there (``STREAM.PURGE`` with a subject filter and a sequence). A copy whose position is
below the compacted note has lost events it never applied (its position note said more
than its store had, say, or a charter that did not declare it compacted): ``compacted()``
tells its projector to fill it again, and ``charter status`` shows it as GAP meanwhile.
Compaction also purges every note's older messages (a note is its subject's newest
message). It returns the number of events purged. Positions are stream sequences and are
never reused. Purging is the admin's right only (charter.natsauth).

Subjects and partitions. An event of ``Customer`` with id ``i`` is published on
``charter.<system>.Customer.<p>`` with ``p = crc32(i) % partitions``. The entity in the
subject lets a NATS authorization config allow a context to publish only on
``charter.<system>.<Entity>.>`` for the entities it owns (G1 on the bus). The partition is a
stable function of the id, so every version of one record travels on one subject: a later
consumer per partition (parallel copies) still sees each id in order. Keep the number of
partitions once chosen. A copy reads its whole entity (filter
``charter.<system>.<Entity>.>``) in stream order; each delivery carries its partition (from
the subject), so a projector lane (charter.lanes) skips other lanes' events without
decoding them (it still receives them: each lane reads the whole entity).

Under contract visibility (charter.visibility) a copy's topic is a subject of its own:
``charter.<system>._copy.<Entity>.<copy>.<p>``, read by the copy alone. So that the server
can permit reading subject by subject (charter.natsauth), every reader and counter is
made with JetStream's extended create (``CONSUMER.CREATE.<stream>.<name>.<filter>``), and
a process whose credentials may not read a stored message by its sequence (refused once)
reads a subject's newest message by a direct get with the subject in the request's own
subject (the stream has ``allow_direct``; on a stream with replicas a follower may answer
a moment behind) and counts a backlog through a consumer. Each connection with a user
takes its replies under ``_INBOX.<user>``, so that user may subscribe to its own only.

Publishing is pipelined (all publishes are written, then the acknowledgements collected;
``publish_begin`` returns before they are, so the relay can read its next batch meanwhile),
in order, on one connection; ``publish`` raises when any event was not acknowledged and
the relay publishes the whole batch again (the duplicate window drops what the stream
already has). If a batch failed half-way, the retry may store an event after newer events
of the same batch: copies still converge, because events carry the full state and a copy
only applies a newer version (G3, G4).

Reading, and saying what a copy has applied:

- Reading: in each process, each copy reads its entity through an ephemeral pull consumer of
  its own (``<copy>-read-<random>``: no acks, memory, one replica, removed by the server
  after a minute without pulls), created at ``after + 1``. So every process that runs a copy
  sees the entity's whole log in order, exactly as from the SQLite bus. This matters: two
  ``charter run`` processes may run the same copy at once (the conformance suite does), and
  a shared durable consumer would split the events between them while the copy's store skips
  positions at or below its checkpoint, which would silently lose one process's share. After
  a crash the next process starts at its checkpoint + 1 at once: no acknowledgement timeout
  to wait for, no in-flight state on the server. A gap in the reader's delivery sequence
  (deliveries lost in a reconnect), a reader the server removed, or a caller going back
  behind what it had: the reader is reopened at the caller's ``after + 1``. What was fetched
  but not applied (the copy's transaction failed) is handed out again, in order.
- What a copy has applied: its *position note*, ``{"position": N}`` on
  ``charter.<system>._note.position.<Entity>.<copy>`` (no consumer: a consumer that
  acknowledges needs every event delivered to it first, which cost about a fifth of the
  end-to-end throughput; see benchmarks/RESULTS.md). ``ack(position)``, called after the
  copy's transaction committed, returns at once; in the background the bus writes the
  newest position per copy at most every ``ACK_INTERVAL_S`` (one note for all the
  positions that came meanwhile; ``compact``, ``backlog`` and ``close`` first send what is
  on its way). Any process may write it: the copy is one store, so a committed position is
  applied; two processes running one copy may move it back a little, which only keeps
  more. The projector's start (charter.projector) writes it, so a copy is known to
  compaction from its first run. Only the context that keeps a copy may write its position
  (charter.natsauth), so no other context can make compaction forget what it needs.
  ``charter status`` is where operators see the copies and how far each has got (there are
  no durable consumers to look at with ``nats consumer report``).

Notes (positions, the compacted mark, and charter.fills' fill requests and fill marks) are
small values kept as the newest message on ``charter.<system>._note.<kind>.<Entity>.<copy>``,
read with a direct get of the last message on that subject; they are outside every entity's
subjects, so readers never see them and compaction does not count them as events.

``head(entity)`` is the stream sequence of the entity's newest event (0 when none);
``backlog`` counts the entity's events after the copy's position (with a short-lived
consumer started there) and reads the commit time (CloudEvent ``time``) of the
first of them (the time the stream stored it, if the event is unreadable or a fill's).

The duplicate window is a time window: within two minutes an event id is dropped even if
compaction has already purged the event (harmless: every copy had applied it).

When a server of a cluster dies (G7). The stream (and so every note) has replicas: the
cluster elects new leaders among the living in seconds (the client meanwhile reconnects to
another server of the URL). A reader has one replica, on any server of the stream, and dies
with its server. Worse, JetStream (2.9) calls a server that vanished without a goodbye
(SIGKILL, a lost machine) offline only after minutes; until then nothing answers for the
consumers it held, not even "no responders" (API requests about them, and pulls, time out),
and the cluster keeps placing new one-replica consumers on it (a third of them, on three
servers), whose creation is never answered either. So:

- a reader that answers nothing to a pull within ``READER_SILENCE_S`` (a living one answers
  a no-wait pull at once) is abandoned: deleted in the background (the meta leader removes
  it even while its server is dead) and replaced by a new one at the copy's position;
- a reader (or counter) whose creation is not answered within ``CREATE_TIMEOUT_S`` is
  deleted the same way, by its name, and made again, placed anew, while the call has time;
- a position note that cannot be written now is written later (the next one covers it);
  compaction, which reads the notes, keeps everything while one cannot be read.

Every call has a budget (``FETCH_BUDGET_S`` and the like) that bounds all its waits and
retries together: a caller gets its answer, or a ``BusError``, within seconds.

Who may do what, under the permissions ``charter apply`` writes (charter.natsauth). The
admin's credentials create the stream: the first charter process that opens the bus with
them (``charter run``, ``charter status``, … with the admin's user in the bus URL); a
context's credentials may not, and a context's process started before the stream exists
says so at once, and who creates it. Only the admin compacts (purging is its right only):
the admin's ``charter run`` does, every minute; a context's ``charter run`` skips
compaction at its first try, with one line, and does not try again in that process.

Refusals. nats-server refuses a publish it does not permit asynchronously (``-ERR
'Permissions Violation for Publish to "<subject>"'``, which nats-py passes to its error
callback, lower-cased). No acknowledgement or answer will ever come, so the bus watches the
subjects of every publish and API request on its way and fails them the moment their
subject is refused: a ``RefusedError`` naming the subject and, given the charter
(``explain``: charter.natsauth.refusal), the context and whose right it is ("context
'orders' … may not publish on charter.shop.Customer.3: it does not own Customer (owner:
customers, team customer-team)"). A refused position note is said once, and not written
again by that process.

Threads. The bus is synchronous: it owns an asyncio event loop in a daemon thread and every
call submits a coroutine to it and waits for the answer with a timeout, so a call made while
the client reconnects raises (the caller retries) and never hangs. The client reconnects
forever, to any server of the URL.
"""

from charter.buses.nats.bus import NatsBus
from charter.buses.nats.core import FETCH_BUDGET_S, BusError, RefusedError
from charter.buses.nats.subjects import (
    COMPACTED,
    NOTES,
    POSITION,
    NatsUrl,
    note_subject,
    parse_url,
    stream_name,
    token,
)

__all__ = [
    "COMPACTED",
    "FETCH_BUDGET_S",
    "NOTES",
    "POSITION",
    "BusError",
    "NatsBus",
    "NatsUrl",
    "RefusedError",
    "note_subject",
    "parse_url",
    "stream_name",
    "token",
]
