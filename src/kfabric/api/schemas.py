"""The wire format: request bodies (``...Create``) and answers (``...Public``). Strings refuse NUL characters
and are length-bounded, numbers are finite and bounded, unknown fields are refused, so bad input is a 422
that names the field, never a storage error."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from kfabric.model.errors import ValidationError
from kfabric.service import notifications

MAX_TEXT = 100_000


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@+-]*$")]
Text = Annotated[str, Field(max_length=MAX_TEXT), AfterValidator(_no_nul)]
ShortText = Annotated[str, Field(max_length=200), AfterValidator(_no_nul)]
Seconds = Annotated[float, Field(gt=0, le=10 * 365 * 86_400)]
Count = Annotated[int, Field(ge=0, le=1_000_000)]
Key = Annotated[str, Field(max_length=200), AfterValidator(_no_nul)]
Score = Annotated[float, Field(ge=0, le=10)]


#: the largest batch script a job may carry (bytes of UTF-8), as stored with the job
MAX_SCRIPT_BYTES = 256 * 1024


def _script_size(value: str) -> str:
    size = len(value.encode())
    if size > MAX_SCRIPT_BYTES:
        raise ValueError(
            f"the script is {size} bytes, more than the {MAX_SCRIPT_BYTES} bytes (256 KiB) a job may carry; "
            "keep large data in files the script reads"
        )
    return value


Script = Annotated[str, AfterValidator(_script_size), AfterValidator(_no_nul)]
#: an --array / --dependency expression (parsed by kfabric.service.job_arrays / dependencies)
Expression = Annotated[str, Field(max_length=4000), AfterValidator(_no_nul)]
PathText = Annotated[str, Field(max_length=4096), AfterValidator(_no_nul)]


class Strict(BaseModel):
    # strict: JSON types are taken as they are (true is not the integer 1, "8" is not a number, 2.0 is not an
    # integer count); a float field still takes an integer
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


def _kfabric_error_to_value(check: Any, value: Any) -> Any:
    """Run a service check; its :class:`ValidationError` as the ``ValueError`` pydantic reports (422, the field)."""
    try:
        return check(value)
    except ValidationError as exc:
        raise ValueError(exc.problem + (f" ({exc.fix})" if exc.fix else "")) from None


def _comma_list(value: Any) -> Any:
    """``"BEGIN,END"`` (as sbatch takes it) → ``["BEGIN", "END"]``; a list stays."""
    return [part for part in value.split(",") if part.strip()] if isinstance(value, str) else value


def _mail_types(value: list[str]) -> list[str]:
    return list(_kfabric_error_to_value(notifications.mail_types, value))


def _mail_user(value: str) -> str:
    return str(_kfabric_error_to_value(notifications.check_mail_user, value)) if value else value


def _notify_url(value: str) -> str:
    return str(_kfabric_error_to_value(notifications.check_notify_url, value)) if value else value


class JobCreate(Strict):
    project: Name
    time_limit_s: Seconds
    name: ShortText = ""
    gpus: Count = 1
    gpu_milli: Annotated[int, Field(ge=1, le=1000)] = 1000
    nodes: Annotated[int, Field(ge=1, le=100_000)] | None = None
    gpus_per_node: Annotated[int, Field(ge=1, le=1024)] | None = None
    gpu_models: Annotated[list[Name], Field(max_length=32)] = []
    min_topology: ShortText = "any"
    runtime_estimate_s: Seconds | None = None
    priority: ShortText = "normal"
    preemptible: bool = True
    checkpoint_interval_s: Seconds | None = None
    restart_cost_s: Annotated[float, Field(ge=0, le=86_400)] = 0.0
    classification: ShortText = "public"
    cpu_milli: Annotated[int, Field(ge=0, le=10**9)] = 0
    memory_mib: Annotated[int, Field(ge=0, le=10**9)] = 0
    command: Text = ""
    image: ShortText = ""
    env: Annotated[
        dict[Annotated[str, Field(max_length=200), AfterValidator(_no_nul)], Text], Field(max_length=200)
    ] = {}
    workdir: Annotated[str, Field(max_length=4096), AfterValidator(_no_nul)] = ""
    client_key: ShortText | None = None
    # Slurm-style submission (issue 19). ``script``: the batch script's text, stored in the job's own column
    # (the job runs this copy), audited as its SHA-256 and size; the others are kept in the spec
    script: Script | None = None
    #: output/error file patterns (%j %A %a %x %u %N), resolved at launch; "" = kfabric-%j.out in the workdir
    output: PathText = ""
    error: PathText = ""
    #: job array: "0-99%10,200", "1-9:2" (each task a job; %N caps the tasks running at once)
    array: Expression = ""
    #: "afterok:12:13", "afterany:12_3", "singleton", "afterok:12?afternotok:13"
    dependency: Expression = ""
    #: a dependency that can never be met cancels the job (False: it stays pending, saying so)
    kill_on_invalid_dep: bool = True
    #: submit held (``kfabric release ID`` lets it run)
    hold: bool = False
    #: not eligible before this time (epoch seconds, ``--begin``)
    begin_s: Annotated[float, Field(ge=0, le=10**11)] | None = None
    #: notifications (service/notifications.py): Slurm's mail types (BEGIN, END, FAIL, REQUEUE, ALL), the
    #: address they go to, and a webhook signed with the project's secret
    mail_type: Annotated[list[Annotated[str, Field(max_length=100)]], Field(max_length=16),
                         BeforeValidator(_comma_list), AfterValidator(_mail_types)] = []  # fmt: skip
    mail_user: Annotated[str, Field(max_length=254), AfterValidator(_mail_user)] = ""
    notify_url: Annotated[str, Field(max_length=2000), AfterValidator(_notify_url)] = ""

    @model_validator(mode="after")
    def _mail_needs_a_target(self) -> JobCreate:
        if self.mail_type and not self.mail_user and not self.notify_url:
            raise ValueError(
                "mail_type needs mail_user (kfabric keeps no mail address for its users): --mail-user ADDR"
            )
        return self

    def spec(self) -> dict[str, Any]:
        """The job's fields as stored (defaults left out, so the stored spec is what the user asked)."""
        return self.model_dump(exclude={"project", "client_key", "script"}, exclude_defaults=True) | {
            "time_limit_s": self.time_limit_s
        }


class NodePublic(BaseModel):
    node: str
    gpus: list[int]
    gpu_milli: int


class JobPublic(BaseModel):
    id: int
    project: str
    user: str
    name: str
    state: str
    reason_code: str
    reason: str
    expected_start_s: float | None
    #: why a pending job has no expected start ("" when it has one, or is not pending)
    expected_start_why: str = ""
    submitted_at_s: float
    admitted_at_s: float | None
    started_at_s: float | None
    ended_at_s: float | None
    exit_code: int | None
    attempt: int
    gpus: int
    gpu_milli: int
    time_limit_s: float
    priority: str
    pool: str | None
    nodes: list[NodePublic]
    cancel_requested: bool
    spec: dict[str, Any]
    #: what the submitter should know about how the job was admitted (only in the answer to a submission)
    notes: list[str] = []
    #: the output files of the current attempt (patterns resolved at launch); "" before it or on ``sim``
    stdout_path: str = ""
    stderr_path: str = ""
    #: arrays: the id of the array's first task (Slurm's %A) and this task's index (%a); None outside an array
    array_job_id: int | None = None
    array_task_id: int | None = None
    #: how listings name the job: "12" or, for an array task, "ARRAYID_INDEX" (e.g. "12_3")
    display_id: str = ""
    #: "" (not held), "user" or "admin"; the dependency it waits for; not eligible before ``begin_s``
    held_by: str = ""
    dependency: str = ""
    begin_s: float | None = None


class JobUpdate(Strict):
    """A change of pending jobs (``PATCH /v1/jobs/{id}``); fields left out stay as they are."""

    time_limit_s: Seconds | None = None
    priority: ShortText | None = None
    gpus: Count | None = None
    name: ShortText | None = None
    #: epoch seconds; 0 clears it
    begin_s: Annotated[float, Field(ge=0, le=10**11)] | None = None
    #: "" clears it
    dependency: Expression | None = None
    kill_on_invalid_dep: bool | None = None

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class JobChangePublic(BaseModel):
    """The answer to hold, release, requeue and update: the reference as given and the jobs (tasks) it changed."""

    job: str
    action: str
    changed: int
    job_ids: list[int]
    message: str


class JobScriptPublic(BaseModel):
    job_id: int
    #: the batch script as submitted (None: the job runs a --wrap command)
    script: str | None
    sha256: str
    bytes: int


class JobEventPublic(BaseModel):
    at_s: float
    from_state: str
    to_state: str
    reason: str


class JobLogPublic(BaseModel):
    """A part of a job's output (``GET /v1/jobs/{id}/log``): ``data`` holds the bytes from ``offset`` as UTF-8 text
    (an invalid byte shown as U+FFFD); ask for more from ``next_offset``. ``size`` is the file's size when read;
    ``final``: the job has ended, so once ``eof`` nothing more will come. ``note`` says why there is nothing yet."""

    job_id: int
    stream: str
    path: str
    offset: int
    next_offset: int
    size: int
    eof: bool
    state: str
    final: bool
    data: str
    note: str = ""


class OrganizationCreate(Strict):
    name: Name
    kind: ShortText
    region: ShortText = ""
    flags: Annotated[list[Name], Field(max_length=32)] = []


class ProjectCreate(Strict):
    name: Name
    organization: Name


#: a POSIX account name (checked by ``service/posix.py``, whose errors say what a valid one is)
PosixName = Annotated[str, Field(max_length=64), AfterValidator(_no_nul)]


class UserCreate(Strict):
    name: Name
    role: ShortText
    organization: Name | None = None
    projects: Annotated[list[Name], Field(max_length=256)] = []
    owner: ShortText = ""
    #: the POSIX account the user's jobs run as ("" = none yet: its jobs are refused until one is set)
    posix_user: PosixName = ""


class UserUpdate(Strict):
    #: the POSIX account the user's jobs run as; "" removes the mapping
    posix_user: PosixName


class UserCreated(BaseModel):
    id: int
    name: str
    role: str
    token: str
    posix_user: str = ""


class ProgramCreate(Strict):
    name: Name
    description: Text = ""
    owner: ShortText = ""
    weight: Annotated[float, Field(gt=0, le=1e6)] = 1.0
    rules: dict[str, Any] = {}


class ApplicationCreate(Strict):
    program: Name
    project: Name
    gpu_model_class: Name
    gpus: Annotated[int, Field(ge=1, le=1_000_000)]
    months: Annotated[int, Field(ge=1, le=120)]
    justification: Text = ""


class ReviewCreate(Strict):
    scores: Annotated[
        dict[Annotated[str, Field(max_length=64)], Annotated[float, Field(ge=0, le=10)]], Field(max_length=32)
    ]
    comment: Text = ""


class DecisionCreate(Strict):
    approve: bool
    note: Text = ""
    start_s: Annotated[float, Field(ge=0, le=10**11)] | None = None
    reserved: bool = True
    credit_su_hours: Annotated[float, Field(ge=0, le=1e12)] = 0.0


class GrantCreate(Strict):
    name: Name
    program: Name
    project: Name
    start_s: Annotated[float, Field(ge=0, le=10**11)]
    end_s: Annotated[float, Field(ge=0, le=10**11)]
    reserved_model: Name | None = None
    reserved_gpus: Count = 0
    credit_su_hours: Annotated[float, Field(ge=0, le=1e12)] = 0.0
    weight: Annotated[float, Field(gt=0, le=1e6)] | None = None
