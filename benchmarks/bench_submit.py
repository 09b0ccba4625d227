"""Job submissions per second and their latency over HTTP, against a real `kfabric serve` subprocess.

    .venv/bin/python benchmarks/bench_submit.py                                  # both stores, 5,000 jobs, 16 conns
    .venv/bin/python benchmarks/bench_submit.py --store sqlite --n 2000 --concurrency 8 --client both --json
    .venv/bin/python benchmarks/bench_submit.py --store postgresql --profile /tmp/prof   # + cProfile of the server

The server runs the local fleet (4 declared GPUs) with `--tick 3600`: the controller ticks once at start, so
the submitted jobs stay pending and nothing but the API works during the run. Each submission is a
`POST /v1/jobs` of a trivial job (`true`, 1 GPU, 60 s) with a client key of its own, over `--concurrency`
keep-alive connections. PostgreSQL is a private server (tests/pg_server.py's PgServer: fsync off, as in the
tests). The client runs on the same machine as the server and takes CPU from it: `--client httpx` (default)
is a thread per connection with its own httpx client (~1 ms of CPU per request); `--client raw` one asyncio
loop writing HTTP/1.1 by hand (~0.1 ms), which measures the server rather than the client; `both` runs each
against a fresh server (results `STORE` and `STORE-raw`).

Reported: jobs/s (submissions over the wall time of the measured phase), latency p50/p99/max per request
(client side), and the CPU time per submission of the server and of this (client) process. Target of the
issue: >= 1,000 jobs/s, p99 < 50 ms. Run by hand; nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import marshal
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # PgServer: the tests' private PostgreSQL

from pg_server import PgServer, PgServerError  # noqa: E402

WARMUP = 200
GPUS = 4


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


class Server:
    """`kfabric serve` on a free port; with ``profile``, under cProfile (every thread) until stopped."""

    def __init__(self, db_url: str, state_dir: Path, profile: Path | None = None) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.state_dir = state_dir
        self.log = state_dir.parent / f"{state_dir.name}.log"
        serve = [
            "serve", "--db", db_url, "--fleet", "local", "--local-gpus", str(GPUS), "--tick", "3600",
            "--port", str(self.port), "--state-dir", str(state_dir), "--log-level", "warning",
        ]  # fmt: skip
        if profile is None:
            cmd = [sys.executable, "-m", "kfabric.cli.main", *serve]
        else:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--profiled-serve", str(profile), "--", *serve]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kfabric serve exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/healthz", timeout=1.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"kfabric serve not healthy after 60 s:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        self.token = (state_dir / "operator.token").read_text().strip()

    def stop(self) -> None:
        """SIGTERM (uvicorn shuts down gracefully, a profile is written), SIGKILL if it lingers."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


def _body(prefix: str, i: int) -> dict[str, Any]:
    return {"project": "default", "gpus": 1, "time_limit_s": 60, "command": "true", "client_key": f"{prefix}-{i}"}


def _httpx_load(server: Server, n: int, concurrency: int, prefix: str) -> tuple[list[float], dict[int, int], list[str]]:
    """``concurrency`` threads, each with its own keep-alive httpx connection."""
    keys = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    headers = {"Authorization": f"Bearer {server.token}"}

    def worker() -> None:
        mine: list[float] = []
        seen: dict[int, int] = {}
        try:
            with httpx.Client(base_url=server.base, headers=headers, timeout=30.0) as client:
                while True:
                    with lock:
                        i = next(keys)
                    if i >= n:
                        break
                    t0 = time.perf_counter()
                    r = client.post("/v1/jobs", json=_body(prefix, i))
                    mine.append((time.perf_counter() - t0) * 1000)
                    seen[r.status_code] = seen.get(r.status_code, 0) + 1
        except httpx.HTTPError as exc:
            errors.append(repr(exc))
        with lock:
            latencies.extend(mine)
            for code, k in seen.items():
                statuses[code] = statuses.get(code, 0) + k

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return latencies, statuses, errors


def _raw_load(server: Server, n: int, concurrency: int, prefix: str) -> tuple[list[float], dict[int, int], list[str]]:
    """``concurrency`` keep-alive HTTP/1.1 connections driven by one asyncio loop, requests written and answers
    parsed by hand (status line, Content-Length): a client that costs far less CPU than httpx in threads."""
    keys = itertools.count()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {server.token}\r\n"
        "Content-Type: application/json\r\nContent-Length: "
    ).encode()

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            while (i := next(keys)) < n:
                body = json.dumps(_body(prefix, i)).encode()
                t0 = time.perf_counter()
                writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                latencies.append((time.perf_counter() - t0) * 1000)
                code = int(status_line.split()[1])
                statuses[code] = statuses.get(code, 0) + 1
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
            errors.append(repr(exc))
        finally:
            writer.close()

    async def run() -> None:
        await asyncio.gather(*(connection() for _ in range(concurrency)))

    asyncio.run(run())
    return latencies, statuses, errors


def submit_load(server: Server, n: int, concurrency: int, prefix: str, client: str = "httpx") -> dict[str, Any]:
    """POST ``n`` jobs over ``concurrency`` connections; latencies in ms, wall seconds, HTTP statuses, and the CPU
    seconds of the server and of this (client) process."""
    load = _raw_load if client == "raw" else _httpx_load
    cpu0, own0 = _cpu_s(server.proc.pid), time.process_time()
    t0 = time.perf_counter()
    latencies, statuses, errors = load(server, n, concurrency, prefix)
    wall = time.perf_counter() - t0
    cpu, own = _cpu_s(server.proc.pid) - cpu0, time.process_time() - own0
    return {
        "latencies": sorted(latencies),
        "wall_s": wall,
        "server_cpu_s": cpu,
        "client_cpu_s": own,
        "statuses": statuses,
        "errors": errors,
    }


def _count_jobs(server: Server) -> int:
    r = httpx.get(f"{server.base}/metrics", headers={"Authorization": f"Bearer {server.token}"}, timeout=30)
    r.raise_for_status()
    total = 0.0
    for line in r.text.splitlines():
        if line.startswith("kfabric_jobs{"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def bench_store(
    store: str, n: int, concurrency: int, profile_dir: Path | None, work: Path, clients: list[str]
) -> dict[str, dict[str, Any]]:
    """One fresh server (and database) per client kind; results keyed STORE (httpx) and STORE-raw."""
    out: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(PgServer()) if store == "postgresql" else None
        for client in clients:
            label = store if client == "httpx" else f"{store}-{client}"
            if pg is not None:
                db_url = pg.create_database(f"bench_submit_{client}")
            else:
                db_url = f"sqlite:///{work / label / 'kfabric.db'}"
            profile = profile_dir / f"server-{label}.prof" if profile_dir else None
            server = Server(db_url, work / f"{label}-state", profile)
            try:
                submit_load(server, WARMUP, min(concurrency, 4), "warmup", client)
                run = submit_load(server, n, concurrency, "run", client)
                stored = _count_jobs(server)
            finally:
                server.stop()
            out[label] = _summary(run, n, concurrency, client, stored, profile)
    return out


def _summary(
    run: dict[str, Any], n: int, concurrency: int, client: str, stored: int, profile: Path | None
) -> dict[str, Any]:
    lat = run["latencies"]
    created = run["statuses"].get(201, 0)
    return {
        "n": n,
        "concurrency": concurrency,
        "client": client,
        "jobs_per_s": round(created / run["wall_s"], 1),
        "p50_ms": round(_percentile(lat, 50), 2),
        "p99_ms": round(_percentile(lat, 99), 2),
        "max_ms": round(lat[-1], 2) if lat else float("nan"),
        "wall_s": round(run["wall_s"], 3),
        "server_cpu_ms_per_job": round(run["server_cpu_s"] * 1000 / max(1, len(lat)), 3),
        "client_cpu_ms_per_job": round(run["client_cpu_s"] * 1000 / max(1, len(lat)), 3),
        "statuses": {str(k): v for k, v in sorted(run["statuses"].items())},
        "errors": run["errors"][:5],
        "jobs_stored": stored,
        "jobs_expected": n + WARMUP,
        "profile": str(profile) if profile else None,
    }


def format_table(results: dict[str, dict[str, Any]]) -> str:
    head = (
        f"{'store':<15}{'n':>7}{'conc':>6}{'jobs/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'srv cpu ms/job':>16}{'client cpu ms/job':>19}"
    )
    lines = [head, "-" * len(head)]
    for store, r in results.items():
        lines.append(
            f"{store:<15}{r['n']:>7}{r['concurrency']:>6}{r['jobs_per_s']:>9.1f}{r['p50_ms']:>9.2f}"
            f"{r['p99_ms']:>9.2f}{r['max_ms']:>9.2f}{r['server_cpu_ms_per_job']:>16.3f}{r['client_cpu_ms_per_job']:>19.3f}"
        )
    for store, r in results.items():
        bad = {k: v for k, v in r["statuses"].items() if k != "201"}
        if bad or r["errors"] or r["jobs_stored"] != r["jobs_expected"]:
            lines.append(
                f"WARNING {store}: statuses {r['statuses']}, errors {r['errors']}, "
                f"{r['jobs_stored']} jobs stored for {r['jobs_expected']} submitted"
            )
        if r["profile"]:
            lines.append(f"{store}: server profile in {r['profile']} (python -m pstats)")
    return "\n".join(lines)


# ---- the server under cProfile: every thread (the API's endpoints run in a thread pool) ----------------------


def profiled_serve(out: Path, argv: list[str]) -> int:
    """Run ``kfabric serve ARGV`` with a cProfile profiler in every thread; on exit, merge them into ``out``.

    The profilers' clock is each thread's CPU time, so waiting (locks, the GIL, the database) costs nothing in
    the profile: it shows where the server's CPU goes.
    """
    import cProfile
    import pstats

    from kfabric.cli.main import main

    profilers: list[cProfile.Profile] = []
    plock = threading.Lock()
    bootstrap = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def profiled_bootstrap(self: threading.Thread) -> None:
        p = cProfile.Profile(time.thread_time)
        with plock:
            profilers.append(p)
        p.enable()
        try:
            bootstrap(self)
        finally:
            p.disable()

    threading.Thread._bootstrap_inner = profiled_bootstrap  # type: ignore[attr-defined]

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(0)

    # uvicorn shuts down on SIGTERM, then raises the signal again with the handler it found: this one, so that the
    # process ends through the `finally` below instead of dying before the profile is written
    signal.signal(signal.SIGTERM, on_term)
    main_profiler = cProfile.Profile(time.thread_time)
    profilers.append(main_profiler)
    main_profiler.enable()
    try:
        return int(main(argv))
    finally:
        main_profiler.disable()
        parts = Path(tempfile.mkdtemp(prefix="kfabric-prof-"))
        files = []
        with plock:
            for k, p in enumerate(profilers):
                p.snapshot_stats()  # no disable(): that would act on this thread, not the profiled one
                if p.stats:
                    f = parts / f"{k}.prof"
                    f.write_bytes(marshal.dumps(p.stats))
                    files.append(str(f))
        if files:
            pstats.Stats(*files).dump_stats(out)
        shutil.rmtree(parts, ignore_errors=True)


def top_costs(profile: Path, n: int = 25) -> str:
    import io
    import pstats

    buf = io.StringIO()
    stats = pstats.Stats(str(profile), stream=buf)
    stats.sort_stats("tottime").print_stats(n)
    stats.sort_stats("cumulative").print_stats(n)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--profiled-serve"]:
        return profiled_serve(Path(argv[1]), argv[3:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--n", type=int, default=5000, help="measured submissions per store (default 5000)")
    ap.add_argument("--concurrency", type=int, default=16, help="client connections (default 16)")
    ap.add_argument(
        "--client",
        choices=["httpx", "raw", "both"],
        default="httpx",
        help="httpx: a thread per connection (default); raw: one asyncio loop writing HTTP/1.1 by hand; both",
    )
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--profile", type=Path, help="run the server under cProfile; write DIR/server-STORE.prof")
    args = ap.parse_args(argv)
    if args.n < 1 or args.concurrency < 1:
        print("error: --n and --concurrency must be >= 1", file=sys.stderr)
        return 2
    stores = ["sqlite", "postgresql"] if args.store == "both" else [args.store]
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    work = Path(tempfile.mkdtemp(prefix="kfabric-bench-submit-"))
    try:
        for store in stores:
            clients = ["httpx", "raw"] if args.client == "both" else [args.client]
            results |= bench_store(store, args.n, args.concurrency, args.profile, work, clients)
    except (PgServerError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2) if args.json else format_table(results))
    if args.profile and not args.json:
        for r in results.values():
            if r["profile"] and Path(r["profile"]).exists():
                print(top_costs(Path(r["profile"])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
