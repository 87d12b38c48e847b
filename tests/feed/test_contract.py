"""Contract tests for the gRPC API (protos/dropwatch/feed/v1/feed.proto) and its generated code.

No database needed. These guard the public wire contract (service and method names, message
fields), the committed generated code in shared/gen (must match the .proto), buf lint/format,
and the rule that every message, field, enum value and RPC carries a doc comment.
"""

from __future__ import annotations

import importlib.resources
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor, descriptor_pb2

from shared.gen.dropwatch.feed.v1 import feed_pb2, feed_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO_ROOT / "protos"
PROTO_FILE = "dropwatch/feed/v1/feed.proto"
SERVICE = "dropwatch.feed.v1.FeedService"
STATUS_CODES = ("INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "UNAVAILABLE", "RESOURCE_EXHAUSTED")

# Field numbers that make up SourceCodeInfo.Location.path (see descriptor.proto).
_FILE = descriptor_pb2.FileDescriptorProto
_MSG = descriptor_pb2.DescriptorProto
FILE_MESSAGE = _FILE.MESSAGE_TYPE_FIELD_NUMBER
FILE_ENUM = _FILE.ENUM_TYPE_FIELD_NUMBER
FILE_SERVICE = _FILE.SERVICE_FIELD_NUMBER
FILE_SYNTAX = _FILE.SYNTAX_FIELD_NUMBER
MSG_FIELD = _MSG.FIELD_FIELD_NUMBER
MSG_NESTED = _MSG.NESTED_TYPE_FIELD_NUMBER
MSG_ENUM = _MSG.ENUM_TYPE_FIELD_NUMBER
ENUM_VALUE = descriptor_pb2.EnumDescriptorProto.VALUE_FIELD_NUMBER
SERVICE_METHOD = descriptor_pb2.ServiceDescriptorProto.METHOD_FIELD_NUMBER

LocPath = tuple[int, ...]


# --- the generated code and the wire contract -------------------------------------------------


def test_service_and_methods_match_contract() -> None:
    service = feed_pb2.DESCRIPTOR.services_by_name["FeedService"]
    assert service.full_name == SERVICE
    methods = {
        m.name: (
            m.input_type.full_name,
            m.output_type.full_name,
            m.client_streaming,
            m.server_streaming,
        )
        for m in service.methods
    }
    assert methods == {
        "JustOpened": (
            "dropwatch.feed.v1.JustOpenedRequest",
            "dropwatch.feed.v1.JustOpenedResponse",
            False,
            False,
        ),
        "StillOpen": (
            "dropwatch.feed.v1.StillOpenRequest",
            "dropwatch.feed.v1.StillOpenResponse",
            False,
            False,
        ),
        "WatchDrops": (  # #15: a server stream
            "dropwatch.feed.v1.WatchDropsRequest",
            "dropwatch.feed.v1.WatchDropsResponse",
            False,
            True,
        ),
        "ListChanges": (  # #15
            "dropwatch.feed.v1.ListChangesRequest",
            "dropwatch.feed.v1.ListChangesResponse",
            False,
            False,
        ),
    }


# Field name -> number for every message: the wire contract. Renumbering breaks clients.
EXPECTED_FIELDS: dict[str, dict[str, int]] = {
    "FeedFilter": {
        "reservation_dates": 1,
        "party_sizes": 2,
        "time_from": 3,
        "time_to": 4,
        "time_slots": 5,
        "venue_ids": 6,
        "all_slots_per_venue": 7,
    },
    "JustOpenedRequest": {"filter": 1, "max_age_seconds": 2, "limit": 3, "page_token": 4},
    "StillOpenRequest": {"filter": 1, "min_age_seconds": 2, "limit": 3, "page_token": 4},
    "JustOpenedResponse": {
        "items": 1,
        "applied_limit": 2,
        "limit_capped": 3,
        "truncated": 4,
        "next_page_token": 5,
        "as_of": 6,
        "no_data_yet": 7,
    },
    "StillOpenResponse": {
        "items": 1,
        "applied_limit": 2,
        "limit_capped": 3,
        "truncated": 4,
        "next_page_token": 5,
        "as_of": 6,
        "no_data_yet": 7,
    },
    "FeedItem": {
        "event_id": 1,
        "venue": 2,
        "reservation_date": 3,
        "slot_time": 4,
        "seating_type": 5,
        "party_sizes": 6,
        "bucket_id": 7,
        "time_slot": 8,
        "time_bucket": 9,
        "opened_at": 10,
        "booking_url": 11,
        "slot_id": 12,
    },
    "Venue": {"id": 1, "name": 2, "neighborhood": 3, "price_range": 4, "url": 5},
    # #15: WatchDrops and ListChanges
    "WatchDropsRequest": {
        "filter": 1,
        "cursor": 2,
        "send_initial_state": 3,
        "heartbeat_seconds": 4,
    },
    "WatchDropsResponse": {
        "opened": 1,
        "closed": 2,
        "sizes_changed": 3,
        "initial_state_end": 4,
        "progress": 5,
        "cursor": 6,
        "initial": 7,
    },
    "ListChangesRequest": {"filter": 1, "cursor": 2, "limit": 3},
    "ListChangesResponse": {
        "changes": 1,
        "next_cursor": 2,
        "truncated": 3,
        "applied_limit": 4,
        "limit_capped": 5,
        "as_of": 6,
    },
    "Change": {"opened": 1, "closed": 2, "sizes_changed": 3, "cursor": 4},
    "DropClosed": {"change_id": 1, "drop": 2, "closed_at": 3, "open_seconds": 4},
    "PartySizesChanged": {"change_id": 1, "drop": 2, "added": 3, "removed": 4, "changed_at": 5},
    "InitialStateEnd": {"items": 1},
    "Progress": {"as_of": 1},
}


def test_message_fields_match_contract() -> None:
    actual = {
        name: {f.name: f.number for f in message.fields}
        for name, message in feed_pb2.DESCRIPTOR.message_types_by_name.items()
    }
    assert actual == EXPECTED_FIELDS


def test_min_age_seconds_distinguishes_unset_from_zero() -> None:
    request = feed_pb2.StillOpenRequest()
    assert not request.HasField("min_age_seconds")
    request.min_age_seconds = 0
    assert request.HasField("min_age_seconds")


def test_time_bucket_enum_matches_contract() -> None:
    enum = feed_pb2.DESCRIPTOR.enum_types_by_name["TimeBucket"]
    assert {v.name: v.number for v in enum.values} == {
        "TIME_BUCKET_UNSPECIFIED": 0,
        "TIME_BUCKET_PRIME": 1,
        "TIME_BUCKET_OFF_PEAK": 2,
    }


class _EchoServicer(feed_pb2_grpc.FeedServiceServicer):
    def JustOpened(
        self, request: feed_pb2.JustOpenedRequest, context: grpc.ServicerContext
    ) -> feed_pb2.JustOpenedResponse:
        return feed_pb2.JustOpenedResponse(applied_limit=request.limit)

    def StillOpen(
        self, request: feed_pb2.StillOpenRequest, context: grpc.ServicerContext
    ) -> feed_pb2.StillOpenResponse:
        return feed_pb2.StillOpenResponse(applied_limit=request.limit)


def test_generated_stub_and_servicer_talk_on_the_contract_wire_names() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    feed_pb2_grpc.add_FeedServiceServicer_to_server(_EchoServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = feed_pb2_grpc.FeedServiceStub(channel)
            reply = stub.JustOpened(feed_pb2.JustOpenedRequest(limit=7), timeout=10)
            assert reply.applied_limit == 7
            # A client built only from the documented wire name must reach the same handler.
            raw = channel.unary_unary(
                f"/{SERVICE}/StillOpen",
                request_serializer=feed_pb2.StillOpenRequest.SerializeToString,
                response_deserializer=feed_pb2.StillOpenResponse.FromString,
            )
            assert raw(feed_pb2.StillOpenRequest(limit=9), timeout=10).applied_limit == 9
    finally:
        server.stop(None)


# --- generated code is up to date, buf is happy ----------------------------------------------


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def test_generated_code_is_up_to_date() -> None:
    result = _run([sys.executable, "scripts/gen_proto.py", "--check"])
    assert result.returncode == 0, (
        f"shared/gen is stale (run `python scripts/gen_proto.py`):\n{result.stdout}{result.stderr}"
    )


def _buf() -> str:
    beside_python = Path(sys.executable).parent / "buf"
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("buf")
    if found is None:
        pytest.fail(
            f"the buf CLI is neither next to {sys.executable} nor on PATH: pip install buf-bin"
        )
    return found


@pytest.mark.parametrize(
    "args", [["lint"], ["format", "-d", "--exit-code"]], ids=["lint", "format"]
)
def test_buf(args: list[str]) -> None:
    result = _run([_buf(), *args])
    assert result.returncode == 0, f"buf {' '.join(args)} failed:\n{result.stdout}{result.stderr}"


# --- every element is documented -------------------------------------------------------------


@pytest.fixture(scope="module")
def proto_source(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorProto:
    """feed.proto compiled with its comments (SourceCodeInfo)."""
    well_known_types = importlib.resources.files("grpc_tools") / "_proto"
    out = tmp_path_factory.mktemp("descriptors") / "feed.binpb"
    result = _run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={PROTO_DIR}",
            f"--proto_path={well_known_types}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            PROTO_FILE,
        ]
    )
    assert result.returncode == 0, result.stderr
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    (file_proto,) = descriptor_set.file
    assert file_proto.name == PROTO_FILE
    return file_proto


def _enum_elements(
    enum: descriptor_pb2.EnumDescriptorProto, path: LocPath, scope: str
) -> Iterator[tuple[LocPath, str]]:
    name = f"{scope}.{enum.name}"
    yield path, name
    for i, value in enumerate(enum.value):
        # Enum values live in the enclosing scope, not inside the enum.
        yield (*path, ENUM_VALUE, i), f"{scope}.{value.name}"


def _message_elements(
    message: descriptor_pb2.DescriptorProto, path: LocPath, scope: str
) -> Iterator[tuple[LocPath, str]]:
    name = f"{scope}.{message.name}"
    yield path, name
    for i, field in enumerate(message.field):
        yield (*path, MSG_FIELD, i), f"{name}.{field.name}"
    for i, nested in enumerate(message.nested_type):
        yield from _message_elements(nested, (*path, MSG_NESTED, i), name)
    for i, enum in enumerate(message.enum_type):
        yield from _enum_elements(enum, (*path, MSG_ENUM, i), name)


def _elements(file_proto: descriptor_pb2.FileDescriptorProto) -> Iterator[tuple[LocPath, str]]:
    """(SourceCodeInfo path, full name) of every message, field, enum, value, service, rpc."""
    scope = file_proto.package
    for i, message in enumerate(file_proto.message_type):
        yield from _message_elements(message, (FILE_MESSAGE, i), scope)
    for i, enum in enumerate(file_proto.enum_type):
        yield from _enum_elements(enum, (FILE_ENUM, i), scope)
    for i, service in enumerate(file_proto.service):
        yield (FILE_SERVICE, i), f"{scope}.{service.name}"
        for j, method in enumerate(service.method):
            yield (FILE_SERVICE, i, SERVICE_METHOD, j), f"{scope}.{service.name}.{method.name}"


def _comments(file_proto: descriptor_pb2.FileDescriptorProto) -> dict[LocPath, str]:
    return {
        tuple(location.path): location.leading_comments.strip()
        for location in file_proto.source_code_info.location
    }


def _add_enum(enum: descriptor.EnumDescriptor, scope: str, names: set[str]) -> None:
    names.add(enum.full_name)
    names.update(f"{scope}.{value.name}" for value in enum.values)


def _add_message(message: descriptor.Descriptor, names: set[str]) -> None:
    names.add(message.full_name)
    names.update(field.full_name for field in message.fields)
    for nested in message.nested_types:
        _add_message(nested, names)
    for enum in message.enum_types:
        _add_enum(enum, message.full_name, names)


def _generated_names() -> set[str]:
    """Full names of everything in the generated descriptor, to prove the walk misses nothing."""
    names: set[str] = set()
    fd = feed_pb2.DESCRIPTOR
    for message in fd.message_types_by_name.values():
        _add_message(message, names)
    for enum in fd.enum_types_by_name.values():
        _add_enum(enum, fd.package, names)
    for service in fd.services_by_name.values():
        names.add(service.full_name)
        names.update(method.full_name for method in service.methods)
    return names


def test_every_element_has_a_leading_comment(
    proto_source: descriptor_pb2.FileDescriptorProto,
) -> None:
    elements = dict(_elements(proto_source))
    walked, generated = set(elements.values()), _generated_names()
    assert walked == generated, (
        f"walk of {PROTO_FILE} disagrees with shared/gen (stale? run scripts/gen_proto.py): "
        f"only in .proto {sorted(walked - generated)}, only in shared/gen "
        f"{sorted(generated - walked)}"
    )
    comments = _comments(proto_source)
    undocumented = sorted(name for path, name in elements.items() if not comments.get(path))
    assert not undocumented, f"no leading // comment in {PROTO_FILE}: {undocumented}"


def test_rpc_comments_list_status_codes(proto_source: descriptor_pb2.FileDescriptorProto) -> None:
    comments = _comments(proto_source)
    methods = [
        (path, name)
        for path, name in _elements(proto_source)
        if path[0] == FILE_SERVICE and len(path) == 4
    ]
    assert len(methods) == 4
    missing = [
        f"{name}: {code}"
        for path, name in methods
        for code in STATUS_CODES
        if code not in comments.get(path, "")
    ]
    assert not missing, f"RPC doc comments must name every status code: {missing}"


def test_file_comment_states_the_formats(proto_source: descriptor_pb2.FileDescriptorProto) -> None:
    comments = _comments(proto_source)
    header = comments.get((FILE_SYNTAX,), "")
    for required in ("YYYY-MM-DD", "HH:MM", "UTC", "google.protobuf.Timestamp"):
        assert required in header, f"file-level comment above `syntax` must mention {required!r}"
