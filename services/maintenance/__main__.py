"""`python -m services.maintenance run [--now ISO-8601]`: the daily CronJob.

Exit 0 on success (also when another run holds the lock), non-zero on failure so the Job's
backoff retries (2 for a `--now` ahead of the database clock); one JSON line on stdout
summarises the run, including what it skipped and why. The same summary is recorded in
`maintenance_runs` (a failed run too, when the database can still be reached), where the
poller reads the last success for the alert: the Pushgateway's memory is not needed for it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from typing import Any

from sqlalchemy import Engine

from services.maintenance import store
from services.maintenance.push import push_summary
from services.maintenance.run import run
from services.maintenance.settings import MaintenanceSettings
from shared.db.engine import unavailable_as_error
from shared.errors import ConfigError, DropwatchError
from shared.startup import exit_code, started

log = logging.getLogger("dropwatch.maintenance")


def parse_now(raw: str | None) -> dt.datetime | None:
    if raw is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise ConfigError("--now", f"{raw!r} is not an ISO-8601 date-time") from None
    if moment.tzinfo is None:
        raise ConfigError("--now", "needs a UTC offset, e.g. 2026-12-01T12:05:00+00:00")
    return moment


def run_once(now: dt.datetime | None = None) -> int:
    with started(MaintenanceSettings, "maintenance") as up, unavailable_as_error():
        settings = up.settings
        began = dt.datetime.now(dt.UTC)
        try:
            summary = run(settings, up.engine, now)
        except Exception as exc:
            _record_failure(up.engine, began, exc)
            raise
        report = summary.as_dict()
        with up.engine.begin() as conn:
            store.record_run(conn, began, "succeeded" if summary.ran else "skipped", report)
    print(json.dumps(report), flush=True)
    if summary.ran and settings.pushgateway_url:
        try:
            push_summary(settings.pushgateway_url, settings.pushgateway_job, summary)
        except OSError as exc:  # the run itself succeeded; say so and keep exit 0
            log.warning("could not push to the Pushgateway: %s", exc)
    return 0


def _record_failure(engine: Engine, began: dt.datetime, exc: Exception) -> None:
    """Best effort: a database that broke the run may refuse the record too."""
    # The first line only: a driver error's later lines carry its SQL and bound parameters.
    first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
    report: dict[str, Any] = {"ok": False, "error": first}
    try:
        with unavailable_as_error(), engine.begin() as conn:
            store.record_run(conn, began, "failed", report)
    except Exception as record_exc:  # the run's own error is the one to report
        log.warning("could not record the failed run: %s", record_exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.maintenance")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="aggregate, prune and slide the bucket window once")
    p.add_argument(
        "--now",
        help="date the run at this ISO-8601 time (with offset): back as far as wanted, ahead of"
        " the database clock by DROPWATCH_MAX_CLOCK_SKEW_SECONDS at most",
    )
    args = parser.parse_args(argv)
    return exit_code("maintenance", lambda: run_once(parse_now(args.now)), _report_failure)


def _report_failure(exc: DropwatchError) -> None:
    """The Job's log keeps one JSON line per run, a failed one too."""
    print(json.dumps({"ok": False, "error": str(exc)}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
