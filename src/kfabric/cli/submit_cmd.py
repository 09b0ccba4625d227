"""``kfabric submit``: submit a batch job, the way ``sbatch`` does.

``kfabric submit --project P --gpus 8 --time 4:00:00 --wrap "python train.py"`` or ``kfabric submit job.sh``.
The script's content is sent and stored with the job (a snapshot: editing the file afterwards changes nothing);
its ``#SBATCH`` lines (``cli/sbatch_directives.py``) and ``#KFABRIC --gpus 8`` lines before its first command are
defaults: ``#KFABRIC`` wins over ``#SBATCH``, the command line over both, as in sbatch. Options kfabric does not
support are listed on stderr, never dropped silently. The job runs in ``--chdir`` (default: the directory you
submit from, where its ``kfabric-%j.out`` goes). Prints ``Submitted job N`` (``--parsable``: ``N``).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from kfabric.api.schemas import MAX_SCRIPT_BYTES, JobCreate
from kfabric.cli.errors import UsageError
from kfabric.cli.queue_cmd import add_remote_args, connect, emit_json
from kfabric.cli.sbatch_directives import BEGIN_FORMATS, parse_begin, read_sbatch, strip_comment
from kfabric.client import Client
from kfabric.model.job import MinTopology, PriorityClass
from kfabric.model.sovereignty import Classification

DIRECTIVE = "#KFABRIC"
TIME_FORMATS = "minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (e.g. 90, 30:00, 4:00:00, 2-12)"

#: Slurm's time formats: (pattern, fields in order); a field after the first is bounded by its unit
_TIME_TABLE: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = tuple(
    (re.compile(p), f)
    for p, f in (
        (r"(\d+)", ("m",)),
        (r"(\d+):(\d+)", ("m", "s")),
        (r"(\d+):(\d+):(\d+)", ("h", "m", "s")),
        (r"(\d+)-(\d+)", ("d", "h")),
        (r"(\d+)-(\d+):(\d+)", ("d", "h", "m")),
        (r"(\d+)-(\d+):(\d+):(\d+)", ("d", "h", "m", "s")),
    )
)
_UNIT_S = {"d": 86_400, "h": 3600, "m": 60, "s": 1}
_BOUND = {"h": 24, "m": 60, "s": 60}
_MEM = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)
_MIB_PER = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024, "": 1}
#: the job options a #KFABRIC line may set (dest names)
JOB_OPTIONS = ("project", "gpus", "nodes", "gpus_per_node", "gpu_milli", "gpu_model", "time", "name", "priority",
               "classification", "min_topology", "preemptible", "checkpoint_interval", "runtime_estimate", "cpus",
               "mem", "env", "chdir", "client_key", "output", "error", "array", "dependency", "hold", "begin",
               "kill_on_invalid_dep", "mail_type", "mail_user", "notify_url", "partition", "qos")  # fmt: skip
_SHAPE = ("gpus", "nodes", "gpus_per_node")


def parse_slurm_time(text: str, flag: str = "--time") -> int:
    """Seconds in a Slurm time ``text`` (see :data:`TIME_FORMATS`); :class:`UsageError` naming ``flag``."""
    value = text.strip()
    for pattern, fields in _TIME_TABLE:
        match = pattern.fullmatch(value)
        if match is None:
            continue
        parts = [int(g) for g in match.groups()]
        for i, (unit, n) in enumerate(zip(fields, parts, strict=True)):
            if i > 0 and n >= _BOUND[unit]:
                raise UsageError(
                    f"{flag}: {text!r} has {n} in the {unit!r} field, which must be < {_BOUND[unit]}; "
                    f"accepted formats: {TIME_FORMATS}"
                )
        seconds = sum(n * _UNIT_S[unit] for unit, n in zip(fields, parts, strict=True))
        if seconds <= 0:
            raise UsageError(f"{flag}: must be more than 0 (every job needs a time limit); accepted: {TIME_FORMATS}")
        return seconds
    raise UsageError(f"{flag}: {text!r} is not a time; accepted formats: {TIME_FORMATS}")


def parse_mem(text: str, flag: str = "--mem") -> int:
    """MiB in a memory size such as ``64G``, ``512M``, ``1.5T`` (no unit: MiB, as in Slurm)."""
    match = _MEM.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"{flag}: {text!r} is not a size; use a number with K, M, G or T, e.g. 64G or 512M")
    return math.ceil(float(match.group(1)) * _MIB_PER[match.group(2).upper()])


class _DirectiveParser(argparse.ArgumentParser):
    """Parses ``#KFABRIC`` lines; errors are raised, not printed with a usage banner."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _add_job_options(p: argparse.ArgumentParser) -> None:
    """The job's options; all default to None ("not given") so that script directives can fill them."""
    p.add_argument("-A", "--project", "--account", metavar="P", help="project to run and charge the job in (required)")
    p.add_argument("-G", "--gpus", metavar="N", help="total GPUs (default 1); or give --nodes and --gpus-per-node")
    p.add_argument("-N", "--nodes", metavar="N", help="number of nodes (with --gpus-per-node)")
    p.add_argument("--gpus-per-node", metavar="G", help="GPUs on each node (with --nodes)")
    p.add_argument("--gpu-milli", metavar="M", help="a fraction of one GPU in thousandths, 1..1000 (e.g. 250)")
    p.add_argument("--gpu-model", action="append", metavar="M", help="acceptable GPU model (repeatable, or a,b)")
    p.add_argument("-t", "--time", metavar="T", help=f"time limit (required): {TIME_FORMATS}")
    p.add_argument(
        "-J", "--name", "--job-name", metavar="NAME", help="job name (default: the script's name, or 'wrap')"
    )
    p.add_argument("--priority", metavar="CLASS", help="scavenger, low, normal (default), high or urgent")
    p.add_argument("--classification", metavar="C", help="public (default), internal, confidential or restricted")
    p.add_argument("--min-topology", metavar="T", help="smallest domain holding all GPUs: any, node, nvlink, rack...")
    p.add_argument("--preemptible", action=argparse.BooleanOptionalAction, help="may be preempted (default: yes)")
    p.add_argument("--checkpoint-interval", metavar="T", help="how often the job checkpoints (Slurm time format)")
    p.add_argument("--runtime-estimate", metavar="T", help="expected run time, helps backfill (Slurm time format)")
    p.add_argument("-c", "--cpus", "--cpus-per-task", metavar="N", help="CPU cores (e.g. 16, or 0.5)")
    p.add_argument("--mem", metavar="SIZE", help="memory, e.g. 64G or 512M (a bare number is MiB)")
    p.add_argument("--env", action="append", metavar="K=V", help="environment variable for the job (repeatable)")
    p.add_argument("-D", "--chdir", metavar="DIR", help="working directory (default: the current directory)")
    p.add_argument("--client-key", metavar="K", help="idempotency key: resubmitting with it returns the same job")
    p.add_argument(
        "-o", "--output", metavar="PATTERN", help="stdout file (%%j %%A %%a %%x %%u %%N; default kfabric-%%j.out)"
    )
    p.add_argument("-e", "--error", metavar="PATTERN", help="stderr file (default: with the output)")
    p.add_argument(
        "-a", "--array", metavar="SPEC", help="job array: 0-99, 1-9:2, 3,5,7, 0-999%%50 (%%N: at most N at once)"
    )
    p.add_argument(
        "-d", "--dependency", metavar="DEP", help="afterok|afternotok|afterany|after:ID[:ID...][,...], singleton"
    )
    p.add_argument("-H", "--hold", action="store_const", const=True, help="submit held (kfabric release ID)")
    p.add_argument("-b", "--begin", metavar="TIME", help=f"not before TIME: {BEGIN_FORMATS}")
    p.add_argument("--kill-on-invalid-dep", metavar="yes|no", help="cancel the job if its dependency can never be met")
    p.add_argument("--mail-type", metavar="TYPES", help="BEGIN, END, FAIL, ALL (comma-separated)")
    p.add_argument("--mail-user", metavar="ADDR", help="where --mail-type mail goes")
    p.add_argument("--notify", dest="notify_url", metavar="URL",
                   help="POST the job's events to URL, signed with the project's webhook secret")  # fmt: skip
    p.add_argument("-p", "--partition", metavar="NAME", help="a pool or GPU model name (mapped to --gpu-model)")
    p.add_argument("-q", "--qos", metavar="NAME", help="a priority class name (mapped to --priority)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "submit",
        help="submit a batch job, like sbatch",
        description="Submit a job: --wrap 'COMMAND' or a SCRIPT whose leading '#KFABRIC --opt value' lines are "
        "defaults for the options below.",
    )
    _add_job_options(p)
    p.add_argument("--wrap", metavar="CMD", help="run this shell command instead of a script")
    p.add_argument("script", nargs="?", metavar="SCRIPT", help="batch script (its content is stored with the job)")
    p.add_argument("--parsable", action="store_true", help="print only the job id (as sbatch --parsable)")
    add_remote_args(p)
    p.set_defaults(handler=run)


def read_script(script: Path) -> str:
    """The script's text; :class:`UsageError` for an unreadable or oversize one (checked before it is parsed)."""
    try:
        size = script.stat().st_size
        if size > MAX_SCRIPT_BYTES:
            raise UsageError(
                f"SCRIPT: {str(script)!r} is {size} bytes, more than the {MAX_SCRIPT_BYTES} bytes (256 KiB) a job "
                "may carry; keep large data in files the script reads"
            )
        return script.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"SCRIPT: cannot read {str(script)!r} ({exc}); give a readable batch script") from None


def read_directives(script: Path, text: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The options of ``script``'s ``#KFABRIC`` lines (those before its first command) and, for each, the
    ``file:line`` it came from. A ``#`` that starts a word ends the line (a trailing comment)."""
    if text is None:
        text = read_script(script)
    parser = _DirectiveParser(prog=DIRECTIVE, add_help=False)
    _add_job_options(parser)
    ns = argparse.Namespace()
    origin: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        words = line.strip().split(None, 1)
        if not words:
            continue
        if not words[0].startswith("#"):
            break  # the first command ends the directives, as in Slurm
        if words[0] != DIRECTIVE:
            continue  # the #! line, comments
        rest = words[1] if len(words) > 1 else ""
        where = f"{script}:{lineno}"
        before = dict(vars(ns))
        try:
            parser.parse_args(shlex.split(strip_comment(rest)), namespace=ns)
        except (UsageError, ValueError) as exc:
            raise UsageError(f"{where}: {line.strip()!r}: {exc}") from None
        for dest, value in vars(ns).items():
            if value is not None and before.get(dest) != value:
                origin[dest] = where
    return {k: v for k, v in vars(ns).items() if v is not None}, origin


def merge(cli: argparse.Namespace, directives: dict[str, Any]) -> dict[str, Any]:
    """Directive values overridden by the command line's. A shape given on the command line (--gpus or
    --nodes/--gpus-per-node) replaces the script's whole shape; --env adds to the script's variables."""
    return layer(directives, {k: getattr(cli, k) for k in JOB_OPTIONS if getattr(cli, k) is not None})


def layer(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top``'s options over ``base``'s: a shape in ``top`` replaces ``base``'s whole shape, and so does a GPU
    model list; ``env`` adds up."""
    merged, top = dict(base), dict(top)
    if any(k in top for k in _SHAPE):
        for k in _SHAPE:
            merged.pop(k, None)
    if "env" in top and "env" in merged:
        top["env"] = list(merged["env"]) + list(top["env"])
    return merged | top


def _yes_no(text: str, flag: str) -> bool:
    value = str(text).strip().lower()
    if value in ("yes", "y", "true", "1"):
        return True
    if value in ("no", "n", "false", "0"):
        return False
    raise UsageError(f"{flag}: expected yes or no, got {text!r}")


def _count(text: str, flag: str, low: int, high: int | None = None) -> int:
    value = text.strip()
    if not value.isdigit() or int(value) < low or (high is not None and int(value) > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise UsageError(f"{flag}: expected a whole number {bound}, got {text!r}")
    return int(value)


def _choice(parse: Any, text: str, flag: str) -> str:
    try:
        return str(parse(text).name.lower())
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def job_fields(o: dict[str, Any], origin: dict[str, str], warnings: list[str] | None = None) -> dict[str, Any]:
    """The API's job fields (``JobCreate``) for merged options ``o``; errors name the flag (and the script line
    when the value came from one)."""

    def flag(dest: str) -> str:
        name = "--" + dest.replace("_", "-")
        return f"{name} (from {origin[dest]})" if dest in origin and dest in o else name

    if not o.get("project"):
        raise UsageError("--project is required: the project that runs and pays for the job, e.g. --project default")
    if not o.get("time"):
        raise UsageError(f"--time is required (every job needs a time limit, as in Slurm); accepted: {TIME_FORMATS}")
    f: dict[str, Any] = {"time_limit_s": parse_slurm_time(o["time"], flag("time"))}
    if o.get("nodes") is not None or o.get("gpus_per_node") is not None:
        if o.get("nodes") is None or o.get("gpus_per_node") is None:
            raise UsageError("--nodes and --gpus-per-node go together; e.g. --nodes 2 --gpus-per-node 8")
        if o.get("gpus") is not None:
            raise UsageError("give --gpus N, or --nodes N --gpus-per-node G, not both")
        f["nodes"] = _count(o["nodes"], flag("nodes"), 1)
        f["gpus_per_node"] = _count(o["gpus_per_node"], flag("gpus_per_node"), 1)
        f["gpus"] = f["nodes"] * f["gpus_per_node"]
    elif o.get("gpus") is not None:
        f["gpus"] = _count(o["gpus"], flag("gpus"), 0)
    if o.get("gpu_milli") is not None:
        f["gpu_milli"] = _count(o["gpu_milli"], flag("gpu_milli"), 1, 1000)
        if f["gpu_milli"] < 1000 and f.get("gpus", 1) != 1:
            raise UsageError(f"{flag('gpu_milli')}: a fraction of a GPU is for one GPU; drop --gpus/--nodes or use 1")
    if o.get("gpu_model"):
        f["gpu_models"] = [m.strip() for v in o["gpu_model"] for m in v.split(",") if m.strip()]
    if o.get("name") is not None:
        f["name"] = o["name"]
    if o.get("priority") is not None:
        f["priority"] = _choice(PriorityClass.parse, o["priority"], flag("priority"))
    if o.get("classification") is not None:
        f["classification"] = _choice(Classification.parse, o["classification"], flag("classification"))
    if o.get("min_topology") is not None:
        f["min_topology"] = _choice(MinTopology.parse, o["min_topology"], flag("min_topology"))
    if o.get("preemptible") is not None:
        f["preemptible"] = bool(o["preemptible"])
    for dest, key in (("checkpoint_interval", "checkpoint_interval_s"), ("runtime_estimate", "runtime_estimate_s")):
        if o.get(dest) is not None:
            f[key] = parse_slurm_time(o[dest], flag(dest))
    if o.get("cpus") is not None:
        try:
            cpus = float(o["cpus"])
        except ValueError:
            cpus = -1.0
        if not 0 < cpus < 1e6:
            raise UsageError(f"{flag('cpus')}: expected a number of cores > 0 such as 16 or 0.5, got {o['cpus']!r}")
        f["cpu_milli"] = round(cpus * 1000)
    if o.get("mem") is not None:
        f["memory_mib"] = parse_mem(o["mem"], flag("mem"))
    if o.get("env"):
        env: dict[str, str] = {}
        for item in o["env"]:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"{flag('env')}: expected NAME=VALUE, got {item!r}")
            env[key.strip()] = value
        f["env"] = env
    return f | slurm_fields(o, flag, warnings if warnings is not None else [])


def slurm_fields(o: dict[str, Any], flag: Any, warnings: list[str]) -> dict[str, Any]:
    """The Slurm-style fields (output, array, dependency, hold, begin, mail, qos); what the server does not take
    is added to ``warnings``."""
    f: dict[str, Any] = {}
    for dest in ("output", "error", "array", "dependency"):
        if o.get(dest):
            f[dest] = str(o[dest])
    if o.get("hold"):
        f["hold"] = True
    if o.get("begin") is not None:
        f["begin_s"] = parse_begin(str(o["begin"]), datetime.now().astimezone(), flag("begin"))
    if o.get("kill_on_invalid_dep") is not None:
        f["kill_on_invalid_dep"] = _yes_no(o["kill_on_invalid_dep"], flag("kill_on_invalid_dep"))
    for dest in ("mail_type", "mail_user", "notify_url"):
        if o.get(dest):
            if dest in JobCreate.model_fields:
                f[dest] = str(o[dest])
            else:
                warnings.append(f"{flag(dest)} is not supported by this kfabric and was ignored")
    if o.get("qos"):
        try:
            priority = PriorityClass.parse(str(o["qos"])).name.lower()
        except ValueError:
            warnings.append(f"{flag('qos')} {o['qos']!r} names no priority class (scavenger, low, normal, high, "
                            "urgent) and was ignored")  # fmt: skip
        else:
            if o.get("priority") is None:
                f["priority"] = priority
    return f


def run(args: argparse.Namespace) -> int:
    if args.wrap is not None and args.script is not None:
        raise UsageError(f"give --wrap 'COMMAND' or SCRIPT ({args.script!r}), not both")
    if args.wrap is None and args.script is None:
        raise UsageError("nothing to run: give --wrap 'COMMAND' or a SCRIPT file")
    directives: dict[str, Any] = {}
    origin: dict[str, str] = {}
    warnings: list[str] = []
    script_text: str | None = None
    if args.script is not None:
        script = Path(args.script).expanduser().resolve()
        script_text = read_script(script)
        sbatch = read_sbatch(script_text, str(script))
        own, own_origin = read_directives(script, script_text)
        directives = layer(sbatch.options, own)  # #KFABRIC lines win over #SBATCH lines
        origin = sbatch.origin | own_origin
        warnings += sbatch.warnings
        command, default_name = "", script.name
    else:
        if not args.wrap.strip():
            raise UsageError("--wrap: the command is empty; e.g. --wrap 'python train.py'")
        command, default_name = args.wrap, "wrap"
    options = merge(args, directives)
    fields = job_fields(options, origin, warnings)
    fields.setdefault("name", default_name)
    fields["command"] = command
    if script_text is not None:
        fields["script"] = script_text
    fields["workdir"] = str(Path(options.get("chdir") or os.getcwd()).expanduser().resolve())
    with connect(args) as client:
        if options.get("partition"):
            _partition(client, str(options["partition"]), fields, warnings)
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        job = client.submit(options["project"], client_key=options.get("client_key"), **fields)
    if args.json:
        emit_json(job)
    elif args.parsable:
        print(job["id"])
    else:
        tasks = f" (array {job['id']}: tasks {fields['array']})" if fields.get("array") else ""
        print(f"Submitted job {job['id']}{tasks}")
        for note in job.get("notes") or []:
            print(f"note: {note}", file=sys.stderr)
    return 0


def _partition(client: Client, name: str, fields: dict[str, Any], warnings: list[str]) -> None:
    """``-p NAME``: a pool of the fleet or a GPU model becomes the job's GPU model (kfabric chooses the pool
    itself); anything else is a warning."""
    if fields.get("gpu_models"):
        warnings.append(f"--partition {name!r} ignored: --gpu-model is given")
        return
    pools = client.fleet().get("pools", [])
    by_pool = {str(p["name"]).lower(): str(p["gpu_model"]) for p in pools}
    models = {str(p["gpu_model"]).lower(): str(p["gpu_model"]) for p in pools}
    for part in name.split(","):
        key = part.strip().lower()
        model = by_pool.get(key) or models.get(key)
        if model is None:
            warnings.append(f"--partition {part!r} names no pool or GPU model of this fleet and was ignored "
                            "(kfabric chooses the pool; --gpu-model narrows it)")  # fmt: skip
        elif model not in fields.setdefault("gpu_models", []):
            fields["gpu_models"].append(model)
