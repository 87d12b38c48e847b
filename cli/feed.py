"""`dropwatch feed just-opened|still-open`: call the feed and print a table or JSON.

The table shows when each drop opened in market time (`DROPWATCH_MARKET_TIMEZONE`), the zone
its slot date and time are in; JSON keeps the feed's UTC timestamps.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import grpc
from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from shared.errors import DropwatchError
from shared.gen.dropwatch.feed.v1 import feed_pb2, feed_pb2_grpc

DEFAULT_ADDR = "127.0.0.1:50051"
DEFAULT_ZONE = "America/New_York"
# C0 and C1 controls and DEL: a name from the provider must not move the cursor, retitle the
# terminal or open a hyperlink (an OSC sequence).
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def plain(value: str) -> Text:
    """Provider text for the table: control characters removed, never parsed as markup."""
    return Text(_CONTROLS.sub("", value))


def market_zone() -> ZoneInfo:
    name = os.environ.get("DROPWATCH_MARKET_TIMEZONE") or DEFAULT_ZONE
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise DropwatchError(f"DROPWATCH_MARKET_TIMEZONE: unknown time zone {name!r}") from None


def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the feed is, who calls it and the filter: what every `dropwatch feed` command takes."""
    parser.add_argument(
        "--addr",
        default=os.environ.get("DROPWATCH_FEED_ADDR", DEFAULT_ADDR),
        help="feed address host:port (default DROPWATCH_FEED_ADDR, else 127.0.0.1:50051)",
    )
    parser.add_argument("--date", action="append", default=[], help="YYYY-MM-DD (repeatable)")
    parser.add_argument("--party-size", type=int, action="append", default=[], help="repeatable")
    parser.add_argument("--time-from", default="", help="HH:MM, slot start at or after")
    parser.add_argument("--time-to", default="", help="HH:MM, slot start at or before")
    parser.add_argument("--time-slot", action="append", default=[], help="anchor HH:MM")
    parser.add_argument("--venue", type=int, action="append", default=[], help="venue id")
    parser.add_argument(
        "--token",
        default=os.environ.get("DROPWATCH_FEED_TOKEN", ""),
        help="the feed's caller token (default DROPWATCH_FEED_TOKEN; docs/deploy.md)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_filter_arguments(parser)
    parser.add_argument("--all-slots", action="store_true", help="no de-duplication by venue")
    parser.add_argument("--limit", type=int, default=0, help="0 = server default")
    parser.add_argument("--page-token", default="")
    parser.add_argument("--json", action="store_true", help="print the response as JSON")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds")


def feed_filter(args: argparse.Namespace) -> feed_pb2.FeedFilter:
    return feed_pb2.FeedFilter(
        reservation_dates=args.date,
        party_sizes=args.party_size,
        time_from=args.time_from,
        time_to=args.time_to,
        time_slots=args.time_slot,
        venue_ids=args.venue,
        all_slots_per_venue=getattr(args, "all_slots", False),
    )


def call_metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Bearer {args.token}"),) if args.token else None


def rpc_error(addr: str, exc: grpc.RpcError) -> DropwatchError:
    """One line naming the feed, the status code and the server's words."""
    code = exc.code().name if hasattr(exc, "code") else "ERROR"
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return DropwatchError(f"feed at {addr}: {code}: {details}")


def call(kind: str, args: argparse.Namespace, max_age: int = 0, min_age: int | None = None) -> int:
    filt, metadata = feed_filter(args), call_metadata(args)
    try:
        with grpc.insecure_channel(args.addr) as channel:
            stub = feed_pb2_grpc.FeedServiceStub(channel)
            response: Any
            if kind == "just-opened":
                response = stub.JustOpened(
                    feed_pb2.JustOpenedRequest(
                        filter=filt,
                        limit=args.limit,
                        page_token=args.page_token,
                        max_age_seconds=max_age,
                    ),
                    timeout=args.timeout,
                    metadata=metadata,
                )
            else:
                request = feed_pb2.StillOpenRequest(
                    filter=filt, limit=args.limit, page_token=args.page_token
                )
                if min_age is not None:
                    request.min_age_seconds = min_age
                response = stub.StillOpen(request, timeout=args.timeout, metadata=metadata)
    except grpc.RpcError as exc:
        raise rpc_error(args.addr, exc) from None
    if args.json:
        print(json.dumps(MessageToDict(response, preserving_proto_field_name=True), indent=2))
    else:
        _table(response, kind, market_zone(), default_age=min_age is None)
    return 0


def _table(
    response: Any,
    kind: str,
    zone: ZoneInfo,
    *,
    default_age: bool,
    console: Console | None = None,
) -> None:
    table = Table(
        title=f"{kind}: {len(response.items)} items (limit {response.applied_limit}); "
        f"times in market time ({zone.key})"
    )
    for column in ("opened", "venue", "date", "time", "seating", "sizes", "bucket"):
        table.add_column(column, no_wrap=True)
    for item in response.items:
        table.add_row(
            item.opened_at.ToDatetime(dt.UTC).astimezone(zone).strftime("%m-%d %H:%M:%S"),
            plain(f"{item.venue.name} ({item.venue.id})"),
            plain(item.reservation_date),
            plain(item.slot_time),
            plain(item.seating_type),
            ",".join(map(str, item.party_sizes)),
            plain(item.bucket_id),
        )
    console = console or Console()
    # Never cut or fold a value a user copies (ids, dates, page tokens): on a narrow terminal
    # the table is printed as wide as it needs and the terminal wraps its lines.
    needed = Measurement.get(console, console.options.update_width(1 << 16), table).maximum
    if needed > console.width:
        console.width = needed
    console.print(table)
    if response.truncated:
        # `=`: a token may start with "-", which argparse would take for an option.
        token = Text("more: --page-token=") + plain(response.next_page_token)
        console.print(token, soft_wrap=True)
    if kind == "still-open" and not response.items and default_age:
        console.print(
            "(still-open lists drops open for at least 10 minutes; --min-age 0 lists newer ones)"
        )
