"""``kfabric serve`` refuses bad set-ups with one clear line (what, where, how to fix) and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from kfabric.cli.main import main

CASES = [
    ("mysql", ["--db", "mysql://u@h/db", "--fleet", "lab"], "--db: unsupported database 'mysql'"),
    ("unreachable-pg", ["--db", "postgresql+psycopg://u@127.0.0.1:1/x", "--fleet", "lab"], "cannot open the store"),
    ("unwritable-sqlite", ["--db", "sqlite:////proc/nope/k.db", "--fleet", "lab"], "cannot create the folder"),
    ("unknown-fleet", ["--fleet", "nope"], "a scenario name"),
    ("unknown-policy", ["--fleet", "lab", "--policy", "nope"], "a policy preset"),
    ("no-fleet-yet", [], "holds no fleet yet: pass --fleet"),
    ("bad-tick", ["--fleet", "lab", "--tick", "0"], "--tick must be > 0"),
    ("bad-port", ["--fleet", "lab", "--port", "70000"], "--port must be 1..65535"),
    ("local-without-gpus", ["--fleet", "local", "--local-gpus", "0"], "--local-gpus N"),
]


@pytest.mark.parametrize(("argv", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_serve_refuses_bad_setups(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code = main(["serve", "--state-dir", str(tmp_path / "state"), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert "Traceback" not in err
