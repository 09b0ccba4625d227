"""``#SBATCH`` directives, ``--begin`` times and the layering of directives (``#KFABRIC`` over ``#SBATCH``, the
command line over both): table-driven, no server."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from kfabric.cli.errors import UsageError
from kfabric.cli.main import build_parser
from kfabric.cli.sbatch_directives import TABLE, parse_begin, read_sbatch, strip_comment
from kfabric.cli.submit_cmd import job_fields, layer, merge, read_directives

MAPPED = [
    ("-A vision", {"project": "vision"}),
    ("--account=vision", {"project": "vision"}),
    ("-t 1:00:00  # one hour", {"time": "1:00:00"}),
    ("--time=30", {"time": "30"}),
    ("-J train", {"name": "train"}),
    ("--job-name train", {"name": "train"}),
    ("-G 4", {"gpus": "4"}),
    ("--gpus=h100:8", {"gpus": "8", "gpu_model": ["h100"]}),
    ("--gpus-per-node=4", {"gpus_per_node": "4"}),
    ("--gres=gpu:b200:8", {"gpus_per_node": "8", "nodes": "1", "gpu_model": ["b200"]}),
    ("-N 2", {"nodes": "2"}),
    ("-o out-%j.txt", {"output": "out-%j.txt"}),
    ("--error=err-%A_%a.txt", {"error": "err-%A_%a.txt"}),
    ("-a 0-99%10", {"array": "0-99%10"}),
    ("--array=1-9:2", {"array": "1-9:2"}),
    ("-d afterok:12:13", {"dependency": "afterok:12:13"}),
    ("--dependency=singleton", {"dependency": "singleton"}),
    ("-H", {"hold": True}),
    ("--begin=now+1hour", {"begin": "now+1hour"}),
    ("--mail-type=END,FAIL --mail-user=a@b.c", {"mail_type": "END,FAIL", "mail_user": "a@b.c"}),
    ("-p h100", {"partition": "h100"}),
    ("-c 8", {"cpus": "8"}),
    ("--cpus-per-task=8", {"cpus": "8"}),
    ("--mem=64G", {"mem": "64G"}),
    ("--kill-on-invalid-dep=no", {"kill_on_invalid_dep": "no"}),
    ("-D /scratch/run", {"chdir": "/scratch/run"}),
    ("--chdir=/scratch/run", {"chdir": "/scratch/run"}),
    ("--export=ALL,SEED=1,MODE=fast", {"env": ["SEED=1", "MODE=fast"]}),
    ("--qos=high", {"qos": "high"}),
    ('--output="a b.txt" # trailing', {"output": "a b.txt"}),
    ("-o out#1.txt", {"output": "out#1.txt"}),  # a '#' inside a word is not a comment
]


@pytest.mark.parametrize(("line", "expect"), MAPPED, ids=[m[0] for m in MAPPED])
def test_mapped_directives(line: str, expect: dict[str, object]) -> None:
    d = read_sbatch(f"#!/bin/bash\n#SBATCH {line}\nrun\n", "job.sh")
    assert d.options == expect and not d.warnings
    assert set(d.origin) == set(expect) and all(v == "job.sh:2" for v in d.origin.values())


WARNED = [
    ("--exclusive", "--exclusive is not supported"),
    ("--comment='tuning run'", "--comment=tuning run is not supported"),
    ("--nice=10", "--nice=10 is not supported"),
    ("-n 4", "--ntasks=4 is not supported"),
    ("--requeue", "--requeue is not supported"),
    ("--gres=nvme:1", "--gres=nvme:1 is not supported"),
    ("--export=NONE", "--export=NONE is not supported"),
    ("--frobnicate=3", "--frobnicate=3 is unknown to kfabric"),
    ("--frobnicate 3", "--frobnicate=3 is unknown to kfabric"),
    ("-Z", "option -Z is unknown to kfabric"),
]


@pytest.mark.parametrize(("line", "warning"), WARNED, ids=[w[0] for w in WARNED])
def test_unsupported_options_are_warned_never_dropped(line: str, warning: str) -> None:
    d = read_sbatch(f"#SBATCH {line}\n", "job.sh")
    assert len(d.warnings) == 1 and d.warnings[0].startswith("job.sh:1: ") and warning in d.warnings[0]


def test_directives_stop_at_the_first_command() -> None:
    text = "#!/bin/bash\n\n# a comment\n#SBATCH -t 5\n#SBATCHX -t 9\necho hi\n#SBATCH -t 10\n"
    assert read_sbatch(text, "s").options == {"time": "5"}


def test_a_missing_value_names_the_line() -> None:
    with pytest.raises(UsageError, match="s:1: --time needs a value"):
        read_sbatch("#SBATCH --time\n", "s")


@pytest.mark.parametrize(
    ("text", "cut"),
    [("-t 5 # x", "-t 5 "), ("#x", ""), ("-o 'a #b'", "-o 'a #b'"), ("-o a#b", "-o a#b"), ('-J "x" #y', '-J "x" ')],
)
def test_strip_comment(text: str, cut: str) -> None:
    assert strip_comment(text) == cut


def test_kfabric_wins_over_sbatch_and_the_command_line_over_both(tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    text = (
        "#!/bin/bash\n"
        "#SBATCH -A from-sbatch -t 10 -J sb --gpus-per-node=8 -N 2\n"
        "#KFABRIC --time 20 --gpus 4  # a comment is fine here too\n"
        "#SBATCH --mem=1G\n"
        "python train.py\n"
    )
    script.write_text(text)
    sbatch = read_sbatch(text, str(script))
    own, _origin = read_directives(script)
    merged = layer(sbatch.options, own)
    assert merged["project"] == "from-sbatch" and merged["time"] == "20" and merged["gpus"] == "4"
    assert "nodes" not in merged and "gpus_per_node" not in merged  # #KFABRIC's shape replaces #SBATCH's
    args = build_parser().parse_args(["submit", "-J", "cli", "--time", "30", str(script)])
    final = merge(args, merged)
    assert (final["name"], final["time"], final["mem"]) == ("cli", "30", "1G")


def test_fields_from_slurm_options() -> None:
    warnings: list[str] = []
    fields = job_fields(
        {"project": "p", "time": "10", "array": "0-9%2", "dependency": "afterok:3", "hold": True,
         "kill_on_invalid_dep": "no", "output": "o-%j", "qos": "low", "begin": "now+2minutes"},
        {},
        warnings,
    )  # fmt: skip
    assert fields["array"] == "0-9%2" and fields["dependency"] == "afterok:3" and fields["hold"] is True
    assert fields["kill_on_invalid_dep"] is False and fields["output"] == "o-%j" and fields["priority"] == "low"
    assert fields["begin_s"] == pytest.approx(datetime.now().timestamp() + 120, abs=5)
    with pytest.raises(UsageError, match="--kill-on-invalid-dep: expected yes or no"):
        job_fields({"project": "p", "time": "10", "kill_on_invalid_dep": "maybe"}, {})


NOW = datetime(2026, 3, 2, 15, 30, 0, tzinfo=timezone(timedelta(hours=9)))
BEGIN = [
    ("now", NOW),
    ("now+60", NOW + timedelta(seconds=60)),
    ("now+1hour", NOW + timedelta(hours=1)),
    ("now+30minutes", NOW + timedelta(minutes=30)),
    ("now+2days", NOW + timedelta(days=2)),
    ("16:00", NOW.replace(hour=16, minute=0)),
    ("15:00", NOW.replace(hour=15, minute=0) + timedelta(days=1)),  # past today: the next day
    ("16:00:30", NOW.replace(hour=16, minute=0, second=30)),
    ("tomorrow", NOW.replace(hour=0, minute=0) + timedelta(days=1)),
    ("midnight", NOW.replace(hour=0, minute=0) + timedelta(days=1)),
    ("teatime", NOW.replace(hour=16, minute=0)),
    ("2026-03-05T08:00:00", NOW.replace(day=5, hour=8, minute=0)),
    ("2026-03-05", NOW.replace(day=5, hour=0, minute=0)),
]


@pytest.mark.parametrize(("text", "expect"), BEGIN, ids=[b[0] for b in BEGIN])
def test_begin_times(text: str, expect: datetime) -> None:
    assert parse_begin(text, NOW) == expect.timestamp()


@pytest.mark.parametrize("text", ["soon", "now+1fortnight", "25:00", "2026-13-01"])
def test_bad_begin_times_say_what_is_accepted(text: str) -> None:
    with pytest.raises(UsageError, match="accepted: now\\+N"):
        parse_begin(text, NOW)


def test_every_table_entry_has_a_long_name_and_a_unique_short_letter() -> None:
    shorts = [short for short, _v, _s in TABLE.values() if short]
    assert len(shorts) == len(set(shorts))
