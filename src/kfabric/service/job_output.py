"""A job's output files: Slurm's ``-o/-e`` file-name patterns, and reading the files safely for ``kfabric job log``.

Patterns (``spec.output`` / ``spec.error``, Slurm's names; an optional width zero-pads numbers, ``%4a`` → ``0007``):

=======  =======================================================================================================
``%j``   the kfabric job id (an array task's own id)
``%A``   the array's job id (the id of its first task); a job outside an array: its own id, as in Slurm
``%a``   the array task id; a job outside an array: ``4294967294``, as in Slurm
``%x``   the job name (``/`` becomes ``_``)
``%u``   the POSIX account the job runs as (the kfabric user's name when it has none)
``%N``   the first node of the placement
``%%``   a ``%``
=======  =======================================================================================================

The default is ``kfabric-%j.out``; without ``-e`` the job's standard error goes to the same file as its standard
output (Slurm's rule). A relative path is taken from the job's working directory (its ``workdir``, which
``kfabric submit`` sets to the directory it was run in; when a job has none — a bare API submission — the home of its
POSIX account, where the ``local`` backend starts it). The paths are resolved when the attempt is launched (``%N``
is known then) and stored in ``jobs.stdout_path`` / ``jobs.stderr_path``.

Reading (:func:`read_output`). The path is the user's choice, and the server may be root, so a read never trusts it:

* the path is walked one component at a time (``openat``); a symbolic link is followed only when root owns it (a
  site's ``/home -> /data/home``), never one a user could have made, so a job that swaps its output for a link to the
  audit key, a token file or ``/etc/shadow`` gets a refusal;
* the file is opened ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO never blocks the server), then ``fstat``: it must be a
  regular file with a single link, owned by the account the job ran as (the mapped account when the server is root,
  the server's own account otherwise) — a file the job could have written itself, never another's;
* at most :data:`MAX_READ_BYTES` are returned per call, with the offset to ask for next, so a huge output is paged,
  never loaded whole.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from kfabric.backends.identity import lookup, server_is_root
from kfabric.model.errors import ValidationError
from kfabric.store import tables as t

#: the output file when the job names none (Slurm's is ``slurm-%j.out``)
DEFAULT_OUTPUT = "kfabric-%j.out"
#: what ``%a`` becomes for a job outside an array (Slurm's NO_VAL)
NO_ARRAY_TASK = 4294967294
#: the most bytes one read returns, and the default of a read that names no ``max_bytes``
MAX_READ_BYTES = 1 << 20
DEFAULT_READ_BYTES = 256 << 10
#: how far back a tail read looks for its lines (the last lines of a file with longer lines are cut)
MAX_TAIL_BYTES = MAX_READ_BYTES
#: the longest resolved path the store keeps (``jobs.stdout_path`` is a String(1000))
MAX_PATH = 1000
#: symbolic links followed in one path at most (as the kernel's ELOOP limit)
_MAX_LINKS = 40
_ESCAPE = re.compile(r"%(\d{0,9})(.?)", re.S)
_FIELDS = "jAaxuN"


class OutputRefused(Exception):
    """The output cannot be read, and why (a sentence that names the path and the fix)."""


@dataclass(frozen=True, slots=True)
class PatternFields:
    """What the patterns of one attempt expand to."""

    job_id: int
    name: str
    user: str
    first_node: str
    array_job_id: int | None = None
    array_task_id: int | None = None


def check_pattern(pattern: str, where: str) -> None:
    """ValidationError unless ``pattern`` is a usable ``-o``/``-e`` pattern (known escapes, no NUL, not too long)."""
    if not pattern.strip():
        raise ValidationError(where, "is empty", f"name a file, e.g. {DEFAULT_OUTPUT}, or leave the option out")
    if "\0" in pattern or "\n" in pattern:
        raise ValidationError(where, "holds a NUL or newline character", "name a file without them")
    if len(pattern) > MAX_PATH // 2:
        raise ValidationError(where, f"is {len(pattern)} characters long", f"keep it under {MAX_PATH // 2}")
    for m in _ESCAPE.finditer(pattern):
        if m.group(2) == "%" and not m.group(1):
            continue
        if m.group(2) not in _FIELDS or not m.group(2):
            shown = f"%{m.group(1)}{m.group(2)}" if m.group(2) else "a trailing %"
            raise ValidationError(
                where,
                f"{shown} is not a known pattern",
                "use %j (job id), %A (array job id), %a (array task id), %x (job name), %u (user), %N (first node) "
                "or %% (a %)",
            )


def expand(pattern: str, fields: PatternFields) -> str:
    """``pattern`` with every escape replaced (an unknown one is kept as written: :func:`check_pattern` refuses
    those at submit)."""

    def one(m: re.Match[str]) -> str:
        width, code = m.group(1), m.group(2)
        if code == "%" and not width:
            return "%"
        number: int | None = None
        if code == "j":
            number = fields.job_id
        elif code == "A":
            number = fields.array_job_id if fields.array_job_id is not None else fields.job_id
        elif code == "a":
            number = fields.array_task_id if fields.array_task_id is not None else NO_ARRAY_TASK
        elif code == "x":
            return fields.name.replace("/", "_").replace("\0", "_")
        elif code == "u":
            return fields.user.replace("/", "_")
        elif code == "N":
            return fields.first_node
        else:
            return m.group(0)
        return str(number).zfill(int(width)) if width else str(number)

    return _ESCAPE.sub(one, pattern)


def output_paths(spec: dict[str, object], fields: PatternFields, base_dir: str) -> tuple[str, str]:
    """The absolute paths of the attempt's standard output and error: ``spec``'s ``output``/``error`` patterns
    (default :data:`DEFAULT_OUTPUT`; no ``error``: the output's path), relative ones under ``base_dir``."""
    out = _absolute(expand(str(spec.get("output") or DEFAULT_OUTPUT), fields), base_dir)
    error = spec.get("error")
    err = _absolute(expand(str(error), fields), base_dir) if error else out
    return out, err


def _absolute(path: str, base_dir: str) -> str:
    return os.path.normpath(os.path.join(base_dir or "/", path))


@dataclass(frozen=True, slots=True)
class LaunchOutput:
    """What the controller adds to an attempt's launch: its output paths ("" = none: the backend writes no files,
    or the job's account is unknown here, and the backend refuses the launch) and the Slurm-style environment."""

    stdout_path: str
    stderr_path: str
    env: dict[str, str]

    def stored(self) -> tuple[str, str]:
        """The paths as the job's row keeps them: a path longer than the column (:data:`MAX_PATH`) is kept as ""
        (the job still writes there; ``job log`` then says no path was kept)."""
        out, err = self.stdout_path, self.stderr_path
        return (out if len(out) <= MAX_PATH else "", err if len(err) <= MAX_PATH else "")


def for_launch(row: t.Job, name: str, posix_user: str, user_name: str, first_node: str, files: bool) -> LaunchOutput:
    """The output paths and environment of job ``row``'s attempt on ``first_node`` (see the module docstring).

    Environment: ``KFABRIC_JOB_ID`` and ``SLURM_JOB_ID`` (kfabric's id, for scripts written for Slurm; on the slurm
    backend Slurm's own ``SLURM_JOB_ID`` stays), ``SLURM_JOB_NAME``, ``SLURM_SUBMIT_DIR`` (the workdir, else the
    account's home) and, for an array task, ``KFABRIC_ARRAY_JOB_ID``/``KFABRIC_ARRAY_TASK_ID`` and their
    ``SLURM_ARRAY_*`` twins."""
    workdir = str(row.spec.get("workdir") or "")
    if not workdir:
        account = lookup(posix_user) if posix_user else None
        workdir = account.home if account is not None else ""
    env = {"KFABRIC_JOB_ID": str(row.id), "SLURM_JOB_ID": str(row.id), "SLURM_JOB_NAME": name}
    if workdir:
        env["SLURM_SUBMIT_DIR"] = workdir
    if row.array_job_id is not None and row.array_task_id is not None:
        for prefix in ("KFABRIC", "SLURM"):
            env[f"{prefix}_ARRAY_JOB_ID"] = str(row.array_job_id)
            env[f"{prefix}_ARRAY_TASK_ID"] = str(row.array_task_id)
    if not files or not workdir:
        return LaunchOutput("", "", env)
    fields = PatternFields(row.id, name, posix_user or user_name, first_node, row.array_job_id, row.array_task_id)
    out, err = output_paths(row.spec, fields, workdir)
    return LaunchOutput(out, err, env)


# --------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class OutputChunk:
    """Part of an output file: ``data`` starts at byte ``offset``; ask next from ``next_offset``; ``size`` is the
    file's size when read (``eof``: nothing was left after this part then)."""

    data: bytes
    offset: int
    next_offset: int
    size: int

    @property
    def eof(self) -> bool:
        return self.next_offset >= self.size


def _refuse(path: str, why: str) -> OutputRefused:
    return OutputRefused(f"output file {path}: {why}")


def open_output(path: str, owner_uid: int) -> int:
    """A read-only descriptor on the output file ``path``, checked as the module docstring says (OutputRefused
    otherwise, FileNotFoundError when it does not exist yet). ``owner_uid``: the account the job ran as."""
    if not os.path.isabs(path) or "\0" in path:
        raise _refuse(path, "is not an absolute path")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    links = 0
    try:
        while parts:
            name = parts.pop(0)
            last = not parts
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                raise
            except OSError as exc:
                raise _refuse(path, f"cannot look at {name!r}: {exc.strerror}") from None
            if stat.S_ISLNK(st.st_mode):
                if st.st_uid != 0:
                    raise _refuse(
                        path,
                        f"{name!r} is a symbolic link (owned by uid {st.st_uid}); only links that root made are "
                        "followed: write the output to a real file",
                    )
                links += 1
                if links > _MAX_LINKS:
                    raise _refuse(path, "too many symbolic links")
                target = os.readlink(name, dir_fd=fd)
                if target.startswith("/"):
                    os.close(fd)
                    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                parts[:0] = [p for p in target.split("/") if p not in ("", ".")]
                continue
            if not last:
                try:
                    nxt = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except OSError as exc:
                    raise _refuse(path, f"cannot enter {name!r}: {exc.strerror}") from None
                os.close(fd)
                fd = nxt
                continue
            if not stat.S_ISREG(st.st_mode):
                raise _refuse(path, "is not a regular file (a device, FIFO or directory is never read)")
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
            try:
                out = os.open(name, flags, dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise _refuse(path, "became a symbolic link; not followed") from None
                raise _refuse(path, f"cannot open: {exc.strerror}") from None
            try:
                _check_open(path, out, owner_uid)
            except BaseException:
                os.close(out)
                raise
            return out
        raise _refuse(path, "names a directory, not a file")
    finally:
        os.close(fd)


def _check_open(path: str, fd: int, owner_uid: int) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(path, "is not a regular file")
    if st.st_uid != owner_uid:
        raise _refuse(
            path,
            f"is owned by uid {st.st_uid}, not by the account the job ran as (uid {owner_uid}); only files the job "
            "could have written itself are read",
        )
    if st.st_nlink != 1:
        raise _refuse(path, f"has {st.st_nlink} hard links; only files with one are read")


def read_output(
    path: str,
    owner_uid: int,
    offset: int = 0,
    max_bytes: int = DEFAULT_READ_BYTES,
    tail_lines: int | None = None,
) -> OutputChunk:
    """Up to ``max_bytes`` (at most :data:`MAX_READ_BYTES`) of the output file from ``offset`` — or, with
    ``tail_lines``, its last lines — checked as :func:`open_output` does. A file that does not exist yet reads as
    empty. A multi-byte UTF-8 character is never cut at the end of a part."""
    limit = _limit(max_bytes)
    try:
        fd = open_output(path, owner_uid)
    except FileNotFoundError:
        start = max(0, int(offset)) if tail_lines is None else 0
        return OutputChunk(b"", start, start, 0)
    try:
        size = os.fstat(fd).st_size
        if tail_lines is not None:
            start = max(0, size - min(limit, MAX_TAIL_BYTES))
            data = os.pread(fd, size - start, start)
            return _tail(data, start, tail_lines)
        start = min(max(0, int(offset)), size)
        data = os.pread(fd, min(limit, size - start), start)
        if len(data) == limit:
            data = _whole_utf8(data)
        return OutputChunk(data, start, start + len(data), size)
    finally:
        os.close(fd)


def chunk_of(
    whole: bytes, offset: int = 0, max_bytes: int = DEFAULT_READ_BYTES, tail_lines: int | None = None
) -> OutputChunk:
    """The part of an output held in memory (the ``sim`` backend's) that :func:`read_output` would return."""
    limit, size = _limit(max_bytes), len(whole)
    if tail_lines is not None:
        start = max(0, size - min(limit, MAX_TAIL_BYTES))
        return _tail(whole[start:], start, tail_lines, size)
    start = min(max(0, int(offset)), size)
    data = whole[start : start + limit]
    if len(data) == limit:
        data = _whole_utf8(data)
    return OutputChunk(data, start, start + len(data), size)


def _limit(max_bytes: int) -> int:
    return max(1, min(int(max_bytes), MAX_READ_BYTES))


def _tail(data: bytes, start: int, lines: int, size: int | None = None) -> OutputChunk:
    cut = _tail_start(data, max(0, int(lines)), whole=start == 0)
    end = start + len(data)
    return OutputChunk(data[cut:], start + cut, end, end if size is None else size)


def _tail_start(data: bytes, lines: int, whole: bool) -> int:
    """Where the last ``lines`` lines of ``data`` begin (a trailing newline ends the last line)."""
    if lines == 0:
        return len(data)
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    at = end
    for _ in range(lines):
        at = data.rfind(b"\n", 0, at)
        if at < 0:
            return 0 if whole else _utf8_start(data)
    return at + 1


def _utf8_start(data: bytes) -> int:
    """Skip continuation bytes at the start of a part cut from the middle of a file."""
    i = 0
    while i < min(3, len(data)) and data[i] & 0xC0 == 0x80:
        i += 1
    return i


def _whole_utf8(data: bytes) -> bytes:
    """``data`` without a multi-byte UTF-8 character cut at its end."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: look further back for the lead byte
        if byte & 0x80 == 0:
            return data  # ASCII: nothing is cut
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
        return data if back >= need else data[:-back]
    return data


# --------------------------------------------------------------------------------------------- job log

#: job states after which an output file grows no more
_FINAL = ("succeeded", "failed", "cancelled", "timeout")


@dataclass(frozen=True, slots=True)
class JobLog:
    """One answer of ``GET /v1/jobs/{id}/log``: a part of the job's ``stream`` (``out`` or ``err``) from ``path``
    (the job's ``stdout_path``/``stderr_path``; "" on ``sim``, whose output is its state changes), and whether the
    job is ``final`` (a follower stops once it is and ``eof``). ``note`` says why there is nothing to read yet."""

    job_id: int
    stream: str
    path: str
    chunk: OutputChunk
    state: str
    note: str = ""

    @property
    def final(self) -> bool:
        return self.state in _FINAL


def run_uid(posix_user: str, as_root: bool | None = None) -> int:
    """The uid the job's files belong to: the mapped account's when the server is root, the server's otherwise
    (OutputRefused when the account is gone)."""
    if not (server_is_root() if as_root is None else as_root):
        return os.geteuid()
    account = lookup(posix_user) if posix_user else None
    if account is None or account.uid == 0:
        raise OutputRefused(
            f"the job's user maps to no usable POSIX account now ({posix_user or 'none'}), so the owner of its "
            "output cannot be checked; map the user again (kfabric user set-posix) or read the file on the machine"
        )
    return account.uid


def job_log(
    row: t.Job,
    posix_user: str,
    events: Iterable[tuple[float, str, str, str]],
    files: bool,
    stream: str = "out",
    offset: int = 0,
    max_bytes: int = DEFAULT_READ_BYTES,
    tail_lines: int | None = None,
) -> JobLog:
    """The part of job ``row``'s output asked for. ``files``: the job's backend writes output files (``local``,
    ``slurm``); otherwise (``sim``) the output is :func:`sim_log` of ``events``. OutputRefused when the file may not
    be read (see the module docstring)."""
    if not files:
        whole = sim_log(row.id, events) if stream == "out" else sim_errors(row)
        return JobLog(row.id, stream, "", chunk_of(whole, offset, max_bytes, tail_lines), row.state)
    path = row.stdout_path if stream == "out" else row.stderr_path
    if not path:
        note = (
            "the job has not started yet; its output appears once it runs"
            if row.state not in _FINAL
            else "the job ended without output (it never started, or it ran before output paths were kept)"
        )
        start = max(0, int(offset)) if tail_lines is None else 0
        return JobLog(row.id, stream, "", OutputChunk(b"", start, start, 0), row.state, note)
    chunk = read_output(path, run_uid(posix_user), offset, max_bytes, tail_lines)
    note = "" if chunk.size or chunk.data else "the file is empty or does not exist yet"
    return JobLog(row.id, stream, path, chunk, row.state, note)


def sim_errors(row: t.Job) -> bytes:
    """The ``err`` stream of a simulated job: why it failed, for a job that failed or timed out."""
    if row.state in ("failed", "timeout") and row.reason:
        return f"sim: job {row.id} {row.state}: {row.reason}\n".encode()
    return b""


# --------------------------------------------------------------------------------------------- sim


def sim_log(job_id: int, events: Iterable[tuple[float, str, str, str]]) -> bytes:
    """The output of a job on the ``sim`` backend: nothing runs there, so its "output" is what happened to it — one
    line per state change (``time from -> to: reason``), marked as simulated."""
    lines = [f"sim: job {job_id} is simulated (nothing ran); its state changes:"]
    for at_s, from_state, to_state, reason in events:
        lines.append(f"{at_s:.3f} {from_state or '-'} -> {to_state}" + (f": {reason}" if reason else ""))
    return ("\n".join(lines) + "\n").encode()
