"""`dropwatch feed watch` and `dropwatch feed changes`: the feed's changes as they are committed.

`watch` holds a WatchDrops stream open and prints one line per change (a drop opened, closed,
or changed its party sizes) until Ctrl-C. A stream the server ends on purpose (UNAVAILABLE:
shutting down, ABORTED: maximum stream age, RESOURCE_EXHAUSTED: too many streams or this
reader too slow) is resumed from the last cursor, so nothing is missed: the one the server put
in the trailing metadata, else the cursor of the last message. The trailing one can be older
than the last message (the server moves a stream's cursor once it sees a write finish), so a
resumed stream may repeat changes; they carry the same ids and are shown once
(`tools.repeats.Recent`). Waits between attempts grow and are jittered, so readers that lost
one replica do not all reconnect at the same moment. A cursor older than the retained history
(OUT_OF_RANGE) cannot be resumed: the command says so and exits, or with `--initial` lists what
is open now and goes on from there.
Times are market time, like the slot dates and times beside them; `--json` prints each message
as it came (UTC timestamps and the cursor), one per line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
import time
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import grpc
from google.protobuf.json_format import MessageToDict

from cli.feed import (
    add_filter_arguments,
    call_metadata,
    feed_filter,
    market_zone,
    plain,
    rpc_error,
)
from shared.errors import DropwatchError
from shared.gen.dropwatch.feed.v1 import feed_pb2, feed_pb2_grpc
from tools.repeats import Recent

CURSOR_KEY = "dropwatch-cursor"  # the trailing metadata key of a stream's end
RESUMABLE = frozenset(
    (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.RESOURCE_EXHAUSTED)
)
KINDS = {"opened": "OPEN", "closed": "CLOSED", "sizes_changed": "SIZES"}


def add_watch_arguments(parser: argparse.ArgumentParser) -> None:
    add_filter_arguments(parser)
    parser.add_argument("--json", action="store_true", help="one JSON message per line")
    parser.add_argument("--from-cursor", default="", help="resume after this cursor")
    parser.add_argument(
        "--initial",
        action="store_true",
        help="first list the drops open now; also how an expired cursor is recovered from",
    )
    parser.add_argument(
        "--heartbeat", type=int, default=0, help="seconds between heartbeats (0 = server's 15)"
    )
    parser.add_argument(
        "--retry-for",
        type=float,
        default=300.0,
        help="give up after this many seconds of failed attempts in a row (default 300)",
    )


def add_changes_arguments(parser: argparse.ArgumentParser) -> None:
    add_filter_arguments(parser)
    parser.add_argument("--cursor", default="", help="list the changes after this cursor")
    parser.add_argument("--limit", type=int, default=0, help="0 = server default (500)")
    parser.add_argument("--json", action="store_true", help="print the response as JSON")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds")


@dataclass
class Backoff:
    """Jittered exponential waits: half of each step fixed, half random."""

    first: float = 0.5
    cap: float = 30.0
    failures: int = 0

    def next(self) -> float:
        step = min(self.cap, self.first * 2**self.failures)
        self.failures += 1
        return float(step / 2 + random.uniform(0, step / 2))


def _at(stamp: Any, zone: ZoneInfo) -> str:
    return str(stamp.ToDatetime(dt.UTC).astimezone(zone).strftime("%m-%d %H:%M:%S"))


def change_line(kind: str, body: Any, zone: ZoneInfo, initial: bool = False) -> str:
    """One change as a line: when (market time), what, the venue, the slot and the detail."""
    item = body if kind == "opened" else body.drop
    slot = f"{item.reservation_date} {item.slot_time}"
    sizes = ",".join(map(str, item.party_sizes))
    if kind == "opened":
        stamp, what, detail = item.opened_at, "OPEN NOW" if initial else "OPEN", f"for {sizes}"
        detail += f"  [{item.bucket_id}]"
    elif kind == "closed":
        stamp, what = body.closed_at, "CLOSED"
        minutes, seconds = divmod(round(body.open_seconds), 60)
        detail = f"after {minutes}m{seconds:02d}s"
    else:
        stamp, what = body.changed_at, "SIZES"
        changed = [f"+{s}" for s in body.added] + [f"-{s}" for s in body.removed]
        detail = f"for {sizes} ({' '.join(changed)})"
    venue = f"{item.venue.name} ({item.venue.id})"
    parts = (_at(stamp, zone), f"{what:<8}", f"{venue:<30}", slot, item.seating_type, detail)
    return plain("  ".join(parts)).plain


def _say(message: str) -> None:
    print(f"watch: {message}", file=sys.stderr, flush=True)


class Printer:
    def __init__(self, as_json: bool, zone: ZoneInfo) -> None:
        self.as_json, self.zone = as_json, zone

    def show(self, message: feed_pb2.WatchDropsResponse) -> None:
        if self.as_json:
            found = MessageToDict(message, preserving_proto_field_name=True)
            print(json.dumps(found, separators=(",", ":")), flush=True)
            return
        kind = message.WhichOneof("message")
        if kind in KINDS:
            line = change_line(str(kind), getattr(message, str(kind)), self.zone, message.initial)
            print(line, flush=True)
        elif kind == "initial_state_end":
            items = message.initial_state_end.items
            print(f"-- {items} drops open now; changes follow --", flush=True)


def _trailing_cursor(exc: grpc.RpcError) -> str:
    trailing: Any = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    return next((str(value) for key, value in trailing or () if key == CURSOR_KEY), "")


def watch(args: argparse.Namespace) -> int:
    """Print changes until Ctrl-C; on a terminal, Ctrl-C says where to resume from."""
    zone, state = market_zone(), {"cursor": args.from_cursor}
    if sys.stderr.isatty():  # a pipeline's reader gets only the changes
        _say(f"{args.addr}, times in market time ({zone.key}); Ctrl-C stops")
    try:
        return _watch(args, Printer(args.json, zone), state)
    except KeyboardInterrupt:
        if state["cursor"] and sys.stderr.isatty():
            _say(f"stopped; resume with --from-cursor={state['cursor']}")  # may start with "-"
        raise


def _watch(args: argparse.Namespace, printer: Printer, state: dict[str, str]) -> int:
    """Resume after every end the server means to be resumed; `state` keeps the cursor."""
    backoff, cursor, failing_since, recent = Backoff(), state["cursor"], 0.0, Recent()
    with grpc.insecure_channel(args.addr) as channel:
        stub = feed_pb2_grpc.FeedServiceStub(channel)
        while True:
            request = feed_pb2.WatchDropsRequest(
                filter=feed_filter(args),
                cursor=cursor,
                send_initial_state=args.initial and not cursor,
                heartbeat_seconds=args.heartbeat,
            )
            call: Any = stub.WatchDrops(request, metadata=call_metadata(args))
            try:
                for message in call:
                    if recent.first_time(message):
                        printer.show(message)
                    cursor = state["cursor"] = message.cursor or cursor
                    backoff.failures, failing_since = 0, 0.0
                code, details = grpc.StatusCode.ABORTED, "the stream ended"
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details() or ""
                cursor = state["cursor"] = _trailing_cursor(exc) or cursor
                if code == grpc.StatusCode.OUT_OF_RANGE and args.initial and request.cursor:
                    _say(f"the cursor has expired ({details}); listing what is open now")
                    cursor = state["cursor"] = ""
                    continue
                if code == grpc.StatusCode.OUT_OF_RANGE:
                    raise DropwatchError(
                        f"feed at {args.addr}: the cursor has expired: {details}; start again"
                        " without --from-cursor, or with --initial to list what is open now"
                    ) from None
                if code not in RESUMABLE:
                    raise rpc_error(args.addr, exc) from None
            finally:
                call.cancel()
            wait = backoff.next()
            if code == grpc.StatusCode.ABORTED and backoff.failures == 1:
                wait = 0.0  # the maximum stream age: resume at once, on any replica
            failing_since = failing_since or time.monotonic()
            if time.monotonic() - failing_since > args.retry_for:
                raise DropwatchError(
                    f"feed at {args.addr}: gave up after {args.retry_for:g} s of failed"
                    f" attempts: {code.name}: {details}"
                )
            resume = "from the last cursor" if cursor else "from the start"
            _say(f"{code.name}: {details}; resuming {resume} in {wait:.1f} s")
            time.sleep(wait)


def changes(args: argparse.Namespace) -> int:
    """One ListChanges page: lines (or JSON), then the cursor to pass next time."""
    request = feed_pb2.ListChangesRequest(
        filter=feed_filter(args), cursor=args.cursor, limit=args.limit
    )
    try:
        with grpc.insecure_channel(args.addr) as channel:
            stub = feed_pb2_grpc.FeedServiceStub(channel)
            response = stub.ListChanges(request, timeout=args.timeout, metadata=call_metadata(args))
    except grpc.RpcError as exc:
        raise rpc_error(args.addr, exc) from None
    if args.json:
        print(json.dumps(MessageToDict(response, preserving_proto_field_name=True), indent=2))
        return 0
    zone = market_zone()
    for change in response.changes:
        kind = str(change.WhichOneof("change"))
        print(change_line(kind, getattr(change, kind), zone))
    more = "; more follow" if response.truncated else ""
    print(f"{len(response.changes)} changes (times in market time, {zone.key}){more}")
    print(f"next: --cursor={response.next_cursor}")  # `=`: a cursor may start with "-"
    return 0
