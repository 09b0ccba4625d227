"""The wire format: request bodies (``...Create``) and answers (``...Public``). Strings refuse NUL characters
and are length-bounded, numbers are finite and bounded, unknown fields are refused, so bad input is a 422
that names the field, never a storage error."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

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


class Strict(BaseModel):
    # strict: JSON types are taken as they are (true is not the integer 1, "8" is not a number, 2.0 is not an
    # integer count); a float field still takes an integer
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


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

    def spec(self) -> dict[str, Any]:
        """The job's fields as stored (defaults left out, so the stored spec is what the user asked)."""
        return self.model_dump(exclude={"project", "client_key"}, exclude_defaults=True) | {
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


class JobEventPublic(BaseModel):
    at_s: float
    from_state: str
    to_state: str
    reason: str


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
