""" "Did you mean ...?" wherever the command line refuses a name: subcommands, options, choices, job states,
queue fields, policies and scenarios. Each case runs ``kfabric`` as a user would (no server needed: every one of
these is refused before any request)."""

from __future__ import annotations

import pytest

from kfabric.cli.main import main

CASES = [
    ("subcommand", ["queu"], "did you mean queue?"),
    ("nested-subcommand", ["fleet", "shw"], "did you mean show?"),
    ("option", ["queue", "--formt", "id"], "--formt: did you mean --format?"),
    ("option-with-value", ["acct", "--startime=today"], "--startime: did you mean --starttime?"),
    ("state", ["queue", "-t", "pendng"], "unknown job state 'pendng' (did you mean pending?)"),
    ("field", ["queue", "--format", "id,stat"], "(did you mean state?)"),
    ("acct-field", ["acct", "--format", "elapsd"], "(did you mean elapsed?)"),
    ("policy", ["simulate", "--fleet", "lab", "--workload", "x", "--policy", "fiifo", "--out", "o"],
     "(did you mean fifo?)"),
    ("scenario", ["fleet", "show", "korea2030"], "(did you mean korea-2030?)"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "hint"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_mistyped_names_get_a_suggestion(
    argv: list[str], hint: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KFABRIC_URL", "http://127.0.0.1:9")  # never reached: refused before any request
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors exit
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2, err
    assert hint in err
    assert "Traceback" not in err


def test_no_suggestion_when_nothing_is_close(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["zzzzqqq"])
    err = capsys.readouterr().err
    assert "invalid choice: 'zzzzqqq'" in err and "did you mean" not in err
