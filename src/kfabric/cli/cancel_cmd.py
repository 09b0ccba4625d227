"""``kfabric cancel JOBID [JOBID ...]``: cancel jobs, like ``scancel``. ``12`` cancels job 12, or every task of
array 12; ``12_3`` cancels task 3 of array 12.

Every job is tried; when one fails its error is printed and the command exits 2 once all were tried. A pending
job ends at once; a running one is stopped by the controller's next dispatch (its state says ``cancelling``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kfabric.cli.errors import UsageError
from kfabric.cli.queue_cmd import add_remote_args, connect, emit_json
from kfabric.client import ApiError
from kfabric.model.errors import ValidationError
from kfabric.service.job_arrays import parse_ref


def parse_job_ref(text: str) -> str:
    """A job reference (``12`` or ``12_3``), or a :class:`UsageError` naming the argument."""
    try:
        return str(parse_ref(text))
    except ValidationError as exc:
        raise UsageError(f"{exc} (kfabric queue lists job ids)") from None


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "cancel",
        help="cancel jobs, like scancel",
        description="Cancel jobs. With --json, prints the list of the API's answers (one job object per id).",
    )
    p.add_argument("job_ids", nargs="+", metavar="JOBID", help="job id, array id or ARRAYID_TASK (kfabric queue)")
    add_remote_args(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    ids = [parse_job_ref(text) for text in args.job_ids]
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
                if "_" not in job_id and job.get("array_job_id") == job.get("id"):
                    print(f"Array {job_id}: {'; '.join(job.get('notes') or ['cancelled'])}")
                elif job["state"] == "cancelled":
                    print(f"Cancelled job {job_id}")
                else:
                    print(f"Cancelling job {job_id} ({job['state']}; it stops at the controller's next dispatch)")
    if args.json:
        emit_json(answers)
    return 2 if failed else 0
