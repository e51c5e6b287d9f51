"""Table definitions (SQLAlchemy Core). The schema itself only changes through Alembic.

Core tables rather than ORM classes: repositories write explicit statements, nothing lazy-loads
under async, and the hot append path stays cheap.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

conversations = Table(
    "conversations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("title", Text, nullable=True),
    Column("metadata", JSON, nullable=False),
    Column("version", Integer, nullable=False),
    Column("next_seq", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("deleted_at", DateTime(timezone=True), nullable=True),
    # Version at which title/metadata last changed, for delta sync.
    Column("fields_version", Integer, nullable=False),
    Index("ix_conversations_created_id", "created_at", "id"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", String(36), primary_key=True),
    Column(
        "conversation_id",
        String(36),
        ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("seq", Integer, nullable=False),
    Column("role", String(32), nullable=False),
    Column("content", Text, nullable=False),
    Column("checksum", String(64), nullable=False),
    Column("version", Integer, nullable=False),  # conversation version that added it
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Content parts when a plain string cannot say it (several parts, or an unusual type).
    Column("parts", JSON(none_as_null=True), nullable=True),
    # A deleted item stays as a tombstone: seqs stay gap-free and delta sync reports it.
    Column("deleted_at", DateTime(timezone=True), nullable=True),
    Column("deleted_version", Integer, nullable=True),
    UniqueConstraint("conversation_id", "seq", name="uq_messages_conversation_seq"),
    Index("ix_messages_conversation_version", "conversation_id", "version"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("scope", String(255), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # in_progress | completed
    Column("status_code", Integer, nullable=True),
    Column("response_body", LargeBinary, nullable=True),
    Column("response_headers", JSON, nullable=True),
    # SHA-256 over (key, scope, status, headers, body) of the stored response; NULL before 0003.
    Column("response_checksum", String(64), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("lease_expires_at", DateTime(timezone=True), nullable=True),
    # Random token of the request holding the claim; completion and takeover compare-and-set it.
    Column("owner", String(32), nullable=False),
    Index("ix_idempotency_keys_expires_at", "expires_at"),
)

download_jobs = Table(
    "download_jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("model_id", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # queued|running|succeeded|failed|cancelled
    Column("phase", String(16), nullable=False),
    Column("bytes_done", BigInteger, nullable=False),
    Column("bytes_total", BigInteger, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("error_code", String(64), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("error_retryable", Boolean, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("duration_s", Float, nullable=True),
    Index("ix_download_jobs_model_state", "model_id", "state"),
)

settings_kv = Table(
    "settings_kv",
    metadata,
    Column("key", String(128), primary_key=True),
    Column("value", JSON, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
