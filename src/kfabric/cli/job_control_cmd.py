"""``kfabric hold ID``, ``release``, ``requeue``, ``update``: change queued and running jobs, like ``scontrol``.

``ID`` is a job id, an array id (every task) or ``ARRAYID_TASK``. ``update`` changes a pending job: ``--time``,
``--priority``, ``--gpus``, ``--name``, ``--begin``, ``--dependency``, ``--kill-on-invalid-dep`` (owners may lower
the time limit and the priority; operators may also raise them). Every change is audited by the server.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from kfabric.cli.cancel_cmd import parse_job_ref
from kfabric.cli.errors import UsageError
from kfabric.cli.queue_cmd import add_remote_args, connect, emit_json
from kfabric.cli.sbatch_directives import BEGIN_FORMATS, parse_begin
from kfabric.cli.submit_cmd import TIME_FORMATS, _choice, _count, _yes_no, parse_slurm_time
from kfabric.model.job import PriorityClass

_HELP = {
    "hold": "hold pending jobs (scontrol hold); an operator's hold is released only by an operator",
    "release": "release held jobs (scontrol release)",
    "requeue": "stop a running job and queue it again as its next attempt (scontrol requeue)",
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for action, text in _HELP.items():
        p = sub.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("job_ids", nargs="+", metavar="JOBID", help="job id, array id or ARRAYID_TASK")
        add_remote_args(p)
        p.set_defaults(handler=run, action=action)
    p = sub.add_parser(
        "update",
        help="change a pending job (scontrol update)",
        description="Change a pending job within your rights: owners may lower --time and --priority, operators "
        "may also raise them.",
    )
    p.add_argument("job_ids", nargs="+", metavar="JOBID", help="job id, array id or ARRAYID_TASK")
    p.add_argument("-t", "--time", metavar="T", help=f"new time limit: {TIME_FORMATS}")
    p.add_argument("--priority", metavar="CLASS", help="scavenger, low, normal, high or urgent")
    p.add_argument("-G", "--gpus", metavar="N", help="total GPUs")
    p.add_argument("-J", "--name", metavar="NAME", help="job name")
    p.add_argument("-b", "--begin", metavar="TIME", help=f"not before TIME ('now' clears it): {BEGIN_FORMATS}")
    p.add_argument("-d", "--dependency", metavar="DEP", help="new dependency ('' clears it)")
    p.add_argument("--kill-on-invalid-dep", metavar="yes|no", help="cancel it if its dependency can never be met")
    add_remote_args(p)
    p.set_defaults(handler=run, action="update")


def changes_of(args: argparse.Namespace) -> dict[str, Any]:
    """The API's ``JobUpdate`` fields for ``update``'s options."""
    c: dict[str, Any] = {}
    if args.time is not None:
        c["time_limit_s"] = float(parse_slurm_time(args.time))
    if args.priority is not None:
        c["priority"] = _choice(PriorityClass.parse, args.priority, "--priority")
    if args.gpus is not None:
        c["gpus"] = _count(args.gpus, "--gpus", 0)
    if args.name is not None:
        c["name"] = args.name
    if args.begin is not None:
        c["begin_s"] = (
            0.0 if args.begin.strip().lower() == "now" else parse_begin(args.begin, datetime.now().astimezone())
        )
    if args.dependency is not None:
        c["dependency"] = args.dependency
    if args.kill_on_invalid_dep is not None:
        c["kill_on_invalid_dep"] = _yes_no(args.kill_on_invalid_dep, "--kill-on-invalid-dep")
    if not c:
        raise UsageError("update: nothing to change; give e.g. --time 1:00:00, --priority low or --begin now+1hour")
    return c


def run(args: argparse.Namespace) -> int:
    refs = [parse_job_ref(text) for text in args.job_ids]
    changes = changes_of(args) if args.action == "update" else {}
    answers: list[dict[str, Any]] = []
    with connect(args) as client:
        for ref in refs:
            call = getattr(client, args.action) if args.action != "update" else None
            answer = call(ref) if call is not None else client.update_job(ref, **changes)
            answers.append(answer)
            if not args.json:
                print(f"Job {ref}: {answer['message']}")
    if args.json:
        emit_json(answers)
    return 0
