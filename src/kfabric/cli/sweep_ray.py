"""The Ray executor of ``kfabric sweep --ray ADDRESS``: each run is one Ray task (one CPU, no retries), its run
directory's files come back to this process, which writes them. Ray is an optional extra
(``pip install 'kfabric[ray]'``), imported only here.

The cluster's Python must import the same kfabric (installed on every node), and trace files a workload spec
names must exist at the same paths there; the scenario and policy files travel with the tasks."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from kfabric.cli.errors import UsageError

INSTALL = "pip install 'kfabric[ray]' (in this checkout: .venv/bin/pip install -e '.[ray]')"
#: seconds to wait for the head's port to answer before calling the address unreachable
CONNECT_TIMEOUT_S = 5.0

T = TypeVar("T")
R = TypeVar("R")


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError(f"--ray: Ray is not installed; install it with: {INSTALL}") from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """``HOST:PORT`` of a head's GCS (or ``ray://HOST:PORT``), or None for ``auto`` and the like."""
    text = address.removeprefix("ray://")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def check_reachable(address: str) -> None:
    """Fail fast with one line when nothing listens at the address (Ray itself retries for a long time)."""
    target = _host_port(address)
    if target is None:
        raise UsageError(
            f"--ray {address!r}: expected HOST:PORT of a Ray head (e.g. 127.0.0.1:6390) or ray://HOST:10001"
        )
    try:
        with socket.create_connection(target, timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise UsageError(
            f"--ray {address}: no Ray cluster answers there ({why}); start one with "
            "`ray start --head --port=6390` and pass --ray 127.0.0.1:6390, or check the address"
        ) from None


def run_on_ray(address: str, tasks: list[T], work: Callable[[T], R]) -> Iterator[R]:
    """``work(task)`` for every task on the Ray cluster at ``address``; results as they finish."""
    ray = import_ray()
    check_reachable(address)
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError... for a bad cluster
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"--ray {address}: cannot connect to a Ray cluster there ({first}); check the address "
            "(the head's GCS port, e.g. 127.0.0.1:6390) and that its Ray version matches this one "
            f"({getattr(ray, '__version__', '?')})"
        ) from None
    return _results(ray, tasks, work)


def _results(ray: Any, tasks: list[T], work: Callable[[T], R]) -> Iterator[R]:
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(work)
        pending = [remote.remote(t) for t in tasks]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayError as exc:
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise UsageError(f"--ray: a run failed on the cluster: {first}") from None
    finally:
        ray.shutdown()
