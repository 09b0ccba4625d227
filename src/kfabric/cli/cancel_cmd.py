"""``kfabric cancel JOBID [JOBID ...]``: cancel jobs, like ``scancel``.

Every job is tried; when one fails its error is printed and the command exits 2 once all were tried. A pending
job ends at once; a running one is stopped by the controller's next dispatch (its state says ``cancelling``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kfabric.cli.queue_cmd import add_remote_args, connect, emit_json, parse_id
from kfabric.client import ApiError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "cancel",
        help="cancel jobs, like scancel",
        description="Cancel jobs. With --json, prints the list of the API's answers (one job object per id).",
    )
    p.add_argument("job_ids", nargs="+", metavar="JOBID", help="job id (kfabric queue lists them)")
    add_remote_args(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    ids = [parse_id(text) for text in args.job_ids]
    answers: list[dict[str, Any]] = []
    failed = 0
    with connect(args) as client:
        for job_id in ids:
            try:
                job = client.cancel(job_id)
            except ApiError as exc:
                if exc.status == 0:
                    raise  # the server is down: the other ids would fail alike
                print(f"error: {exc}", file=sys.stderr)
                failed += 1
                continue
            answers.append(job)
            if not args.json:
                if job["state"] == "cancelled":
                    print(f"Cancelled job {job_id}")
                else:
                    print(f"Cancelling job {job_id} ({job['state']}; it stops at the controller's next dispatch)")
    if args.json:
        emit_json(answers)
    return 2 if failed else 0
