"""The relational schema. Times are POSIX seconds (float, UTC) so SQLite and PostgreSQL agree exactly and the
scheduling core gets them as ``now_s`` without conversion. JSON columns hold value objects (rules, specs,
placements) that are read and written whole.

Every change to this file needs an Alembic revision in ``store/migrations/versions`` (a test compares them).
"""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Id = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class FleetSource(Base):
    """The fleet the service runs: the scenario document it was loaded from (one active row)."""

    __tablename__ = "fleet_sources"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    document: Mapped[str] = mapped_column(Text)
    loaded_at_s: Mapped[float] = mapped_column(Float)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class Organization(Base):
    __tablename__ = "organizations"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    region: Mapped[str] = mapped_column(String(100), default="")
    flags: Mapped[list[Any]] = mapped_column(default=list)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    #: signs the project's job webhooks (``--notify URL``); "" until the first webhook is asked for
    webhook_secret: Mapped[str] = mapped_column(String(128), default="")


class User(Base):
    """A person or robot. ``role``: operator, reviewer, org-admin, member, provider. Org-admins and members
    belong to an organization; providers to a fleet owner (``owner``)."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(32))
    organization_id: Mapped[int | None] = mapped_column(ForeignKey("organizations.id"), index=True)
    owner: Mapped[str] = mapped_column(String(200), default="")
    #: the POSIX account this user's jobs run as (``local`` when the server is root; ``slurm`` via --uid/--gid)
    posix_user: Mapped[str] = mapped_column(String(64), default="")


class ProjectMember(Base):
    __tablename__ = "project_members"
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True, index=True)


class Token(Base):
    """An API token: only its SHA-256 is stored; ``prefix`` (first characters) identifies it to people."""

    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at_s: Mapped[float] = mapped_column(Float)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    #: what the token is for, as its holder named it
    name: Mapped[str] = mapped_column(String(200), default="")
    expires_at_s: Mapped[float | None] = mapped_column(Float)
    last_used_s: Mapped[float | None] = mapped_column(Float)
    revoked_at_s: Mapped[float | None] = mapped_column(Float)


class Program(Base):
    __tablename__ = "programs"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    owner: Mapped[str] = mapped_column(String(200), default="")
    weight: Mapped[float] = mapped_column(Float, default=1.0)
    rules: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Application(Base):
    """status: submitted → approved | rejected."""

    __tablename__ = "applications"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    program_id: Mapped[int] = mapped_column(ForeignKey("programs.id"), index=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    gpu_model_class: Mapped[str] = mapped_column(String(64))
    gpus: Mapped[int] = mapped_column(Integer)
    months: Mapped[int] = mapped_column(Integer)
    justification: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="submitted")
    created_at_s: Mapped[float] = mapped_column(Float)
    decided_at_s: Mapped[float | None] = mapped_column(Float)
    decided_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    decision_note: Mapped[str] = mapped_column(Text, default="")


class Review(Base):
    __tablename__ = "reviews"
    __table_args__ = (UniqueConstraint("application_id", "reviewer_id"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    application_id: Mapped[int] = mapped_column(ForeignKey("applications.id"), index=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    scores: Mapped[dict[str, Any]] = mapped_column(default=dict)
    weighted: Mapped[float] = mapped_column(Float)
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at_s: Mapped[float] = mapped_column(Float)


class Grant(Base):
    """status: active → flagged (under-used) → reclaimed; or expired/exhausted by time and use."""

    __tablename__ = "grants"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    program_id: Mapped[int] = mapped_column(ForeignKey("programs.id"), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    application_id: Mapped[int | None] = mapped_column(ForeignKey("applications.id"))
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)
    reserved_model: Mapped[str | None] = mapped_column(String(64))
    reserved_gpus: Mapped[int] = mapped_column(Integer, default=0)
    credit_su_hours: Mapped[float] = mapped_column(Float, default=0.0)
    used_su_hours: Mapped[float] = mapped_column(Float, default=0.0)
    weight: Mapped[float] = mapped_column(Float, default=1.0)
    status: Mapped[str] = mapped_column(String(16), default="active")
    flagged_at_s: Mapped[float | None] = mapped_column(Float)


class Job(Base):
    """A job and where it is. ``spec`` holds the submitted :class:`kfabric.model.job.Job` fields; ``placement``
    the core's placement while admitted or running. ``attempt`` counts dispatches (a preempted or lost job runs
    again as the next attempt); ``launched`` says the current attempt was handed to its backend."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("project_id", "client_key"),
        Index("ix_jobs_state", "state"),
    )
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    client_key: Mapped[str | None] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(200), default="")
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    reason_code: Mapped[str] = mapped_column(String(32), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    expected_start_s: Mapped[float | None] = mapped_column(Float)
    submitted_at_s: Mapped[float] = mapped_column(Float)
    admitted_at_s: Mapped[float | None] = mapped_column(Float)
    started_at_s: Mapped[float | None] = mapped_column(Float)
    ended_at_s: Mapped[float | None] = mapped_column(Float)
    accounted_to_s: Mapped[float | None] = mapped_column(Float)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    placement: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    grant_id: Mapped[int | None] = mapped_column(ForeignKey("grants.id"))
    borrowed: Mapped[bool] = mapped_column(Boolean, default=False)
    guaranteed: Mapped[bool] = mapped_column(Boolean, default=False)
    backend: Mapped[str] = mapped_column(String(32), default="")
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    launched: Mapped[bool] = mapped_column(Boolean, default=False)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    preempt_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    last_checkpoint_s: Mapped[float | None] = mapped_column(Float)
    attained_gpu_s: Mapped[float] = mapped_column(Float, default=0.0)
    #: service-unit hours of credit held for the current attempt (its time limit at its SU rate), released at end
    reserved_su_hours: Mapped[float] = mapped_column(Float, default=0.0)
    #: the batch script as submitted (snapshot; the job runs this copy, never the file on disk)
    script: Mapped[str | None] = mapped_column(Text)
    #: job arrays: every task is a job; ``array_job_id`` is the id of the array's first task (Slurm's %A)
    array_job_id: Mapped[int | None] = mapped_column(Id, index=True)
    array_task_id: Mapped[int | None] = mapped_column(Integer)
    #: Slurm-style dependency expression (``afterok:12:13,singleton``); "" for none
    dependency: Mapped[str] = mapped_column(Text, default="")
    kill_on_invalid_dep: Mapped[bool] = mapped_column(Boolean, default=True)
    #: who holds the job: "" (not held), "user" or "admin" (only an operator releases an admin hold)
    held_by: Mapped[str] = mapped_column(String(16), default="")
    #: not eligible before this time (``--begin``)
    begin_at_s: Mapped[float | None] = mapped_column(Float)
    #: added to the job's priority by ``update --priority`` (operators) or ``--nice`` (owners, only down)
    priority_adjust: Mapped[float] = mapped_column(Float, default=0.0)
    #: resolved output paths (Slurm patterns expanded where they can be at submit)
    stdout_path: Mapped[str] = mapped_column(String(1000), default="")
    stderr_path: Mapped[str] = mapped_column(String(1000), default="")
    #: why no expected start could be bounded for a pending job ("" when ``expected_start_s`` is set)
    expected_start_why: Mapped[str] = mapped_column(Text, default="")


class JobEvent(Base):
    """Every state change of a job, with its reason."""

    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    at_s: Mapped[float] = mapped_column(Float)
    from_state: Mapped[str] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")


class UsageRecord(Base):
    """GPU use of one job over ``[start_s, end_s)`` on one GPU model, charged to one grant."""

    __tablename__ = "usage_records"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    program_id: Mapped[int | None] = mapped_column(ForeignKey("programs.id"), index=True)
    grant_id: Mapped[int | None] = mapped_column(ForeignKey("grants.id"), index=True)
    site: Mapped[str] = mapped_column(String(200))
    provider: Mapped[str] = mapped_column(String(200))
    gpu_model: Mapped[str] = mapped_column(String(64))
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)
    gpu_s: Mapped[float] = mapped_column(Float)
    su: Mapped[float] = mapped_column(Float)
    price_factor: Mapped[float] = mapped_column(Float)
    charged_su: Mapped[float] = mapped_column(Float)


class AuditEntry(Base):
    """Append-only, keyed hash chain: ``hash = HMAC-SHA256(key[key_id], prev_hash + canonical JSON of every other
    column)`` (``service/audit.py``); the key is kept outside the store."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    at_s: Mapped[float] = mapped_column(Float)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(64))
    organization_id: Mapped[int | None] = mapped_column(Integer, index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: which audit key made ``hash`` (keys rotate; old keys stay to verify old entries)
    key_id: Mapped[str] = mapped_column(String(32), default="")


class ChainHead(Base):
    """One row: the hash of the newest audit entry. Writers lock it, which serializes the chain."""

    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    hash: Mapped[str] = mapped_column(String(64))
    count: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), default=0)


class Lease(Base):
    """A lease that one server holds at a time (``controller``: who runs the scheduling loop). ``epoch`` grows by
    one at every change of holder; the holder's decisions carry it and are refused once it is no longer current
    (fencing, ``service/leadership.py``)."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200), default="")
    epoch: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), default=0)
    expires_at_s: Mapped[float] = mapped_column(Float, default=0.0)
    renewed_at_s: Mapped[float] = mapped_column(Float, default=0.0)
    #: when the current holder took the lease (its epoch began)
    acquired_at_s: Mapped[float] = mapped_column(Float, default=0.0)


class Server(Base):
    """A ``kfabric serve`` process sharing the store: its heartbeat, and whether it leads (``kfabric status``)."""

    __tablename__ = "servers"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(200), default="")
    pid: Mapped[int] = mapped_column(Integer, default=0)
    url: Mapped[str] = mapped_column(String(400), default="")
    started_at_s: Mapped[float] = mapped_column(Float)
    last_seen_s: Mapped[float] = mapped_column(Float)
    role: Mapped[str] = mapped_column(String(16), default="standby")
    last_cycle_s: Mapped[float | None] = mapped_column(Float)


class NodeState(Base):
    """A node out of service, by node name as backends know it: ``state`` is ``drain`` (an operator's, or the
    backend's drain), ``down`` or ``fail`` (the backend's); ``source`` says who set it (``operator`` or a backend
    name). A node with no row, or with ``state`` ``up``, is schedulable. An operator's drain and a backend's
    health are separate rows (``source`` is part of the key), so a repair does not undo a drain."""

    __tablename__ = "node_states"
    node: Mapped[str] = mapped_column(String(200), primary_key=True)
    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    since_s: Mapped[float] = mapped_column(Float)
    by: Mapped[str] = mapped_column(String(200), default="")


class PolicySource(Base):
    """The live scheduling policy: the YAML document applied with ``kfabric policy apply`` (one active row; none:
    the policy ``kfabric serve`` was started with)."""

    __tablename__ = "policy_sources"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    document: Mapped[str] = mapped_column(Text)
    applied_at_s: Mapped[float] = mapped_column(Float)
    applied_by: Mapped[str] = mapped_column(String(200), default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class Notification(Base):
    """A message about a job to deliver (mail or signed webhook), retried with backoff outside the cycle."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_status_next", "status", "next_attempt_s"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    channel: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(1000))
    event: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_s: Mapped[float] = mapped_column(Float)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at_s: Mapped[float] = mapped_column(Float)
    delivered_at_s: Mapped[float | None] = mapped_column(Float)


class WebSession(Base):
    """A signed-in browser: the cookie carries a random id, the store only its SHA-256."""

    __tablename__ = "web_sessions"
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    token_id: Mapped[int | None] = mapped_column(ForeignKey("tokens.id"))
    csrf: Mapped[str] = mapped_column(String(64))
    created_at_s: Mapped[float] = mapped_column(Float)
    expires_at_s: Mapped[float] = mapped_column(Float)
    last_seen_s: Mapped[float] = mapped_column(Float)
    lang: Mapped[str] = mapped_column(String(8), default="")
    tz: Mapped[str] = mapped_column(String(64), default="")
