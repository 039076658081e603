"""Tables for API keys and the audit trail (no patient identifiers in either).

``api_keys`` keeps only a key's public id, its name, scopes and the sha256 of the full key:
the key itself is printed once by ``radlens keys create`` and never stored.

``audit_events`` is append-only: the migration installs triggers (SQLite and PostgreSQL)
that refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL). A row says who (``actor``: the
API key id, ``cli`` for commands run on the server, NULL when authentication is disabled),
what (``action`` and ``target``: a prediction id, never a DICOM UID; ``query`` for listings,
with UID values withheld), when (``at``) and the outcome (``status``, an HTTP status code).

``ui_sessions`` (0017) holds the /ui browser sessions (app/ui/session.py): the sha256 of the
random token in the browser's cookie (never the token), the id of the key that logged in (never
the key), and when the session began, expires and was ended (logged out), by the database's
clock.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from radlens.app.db import Base, UTCDateTime, utcnow

KEY_ID_LENGTH = 12


class ApiKey(Base):
    """An API key: public id, name, scopes and the sha256 of the secret key."""

    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(KEY_ID_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[str] = mapped_column(String(64))  # comma-separated, sorted
    key_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    @property
    def scope_set(self) -> frozenset[str]:
        return frozenset(s for s in self.scopes.split(",") if s)


class AuditEvent(Base):
    """One audited action and its outcome (append-only)."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index(None, "at"),
        Index(None, "action"),
        Index(None, "target"),
    )  # target: 0016

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    actor: Mapped[str | None] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(64))
    query: Mapped[str | None] = mapped_column(String(512))
    status: Mapped[int] = mapped_column(Integer)


class UiSession(Base):
    """(0017) One /ui browser session: the sha256 of its cookie's token and the key's id."""

    __tablename__ = "ui_sessions"
    __table_args__ = (Index(None, "expires_at"), Index(None, "key_id"))

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(
        String(KEY_ID_LENGTH), ForeignKey("api_keys.key_id", ondelete="CASCADE")
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # logged out
