"""``--time`` and the other Slurm-style values of ``kfabric submit``: every accepted format, and errors that name
the flag and list the formats."""

from __future__ import annotations

import pytest

from kfabric.cli.errors import UsageError
from kfabric.cli.submit_cmd import TIME_FORMATS, parse_mem, parse_slurm_time

VALID = [
    ("minutes", "90", 90 * 60),
    ("one-minute", "1", 60),
    ("minutes-padded", " 05 ", 5 * 60),
    ("mm-ss", "30:15", 30 * 60 + 15),
    ("mm-ss-over-an-hour", "90:00", 90 * 60),
    ("hh-mm-ss", "4:00:00", 4 * 3600),
    ("hh-mm-ss-mixed", "1:02:03", 3723),
    ("hh-mm-ss-long", "48:00:00", 48 * 3600),
    ("d-hh", "2-12", 2 * 86400 + 12 * 3600),
    ("d-hh-mm", "1-00:30", 86400 + 30 * 60),
    ("d-hh-mm-ss", "1-02:03:04", 86400 + 2 * 3600 + 3 * 60 + 4),
    ("zero-days", "0-01", 3600),
]

INVALID = [
    ("empty", "", "is not a time"),
    ("unit-suffix", "4h", "is not a time"),
    ("negative", "-5", "is not a time"),
    ("too-many-colons", "1:2:3:4", "is not a time"),
    ("days-only", "2-", "is not a time"),
    ("fraction", "1.5", "is not a time"),
    ("unlimited", "UNLIMITED", "is not a time"),
    ("seconds-60", "10:60", "which must be < 60"),
    ("minutes-60", "1:60:00", "which must be < 60"),
    ("hours-24-with-days", "1-24", "which must be < 24"),
    ("zero", "0", "must be more than 0"),
    ("zero-hms", "0:00:00", "must be more than 0"),
]


@pytest.mark.parametrize(("text", "seconds"), [(t, s) for _i, t, s in VALID], ids=[i for i, _t, _s in VALID])
def test_accepted_formats(text: str, seconds: int) -> None:
    assert parse_slurm_time(text) == seconds


@pytest.mark.parametrize(("text", "problem"), [(t, p) for _i, t, p in INVALID], ids=[i for i, _t, _p in INVALID])
def test_rejected_values_name_the_flag_and_the_formats(text: str, problem: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_slurm_time(text, "--time")
    message = str(err.value)
    assert message.startswith("--time: ")
    assert problem in message
    assert TIME_FORMATS in message


def test_other_flags_are_named() -> None:
    with pytest.raises(UsageError, match=r"^--checkpoint-interval: 'soon' is not a time"):
        parse_slurm_time("soon", "--checkpoint-interval")


@pytest.mark.parametrize(
    ("text", "mib"),
    [("64G", 65536), ("512M", 512), ("512", 512), ("1T", 1024 * 1024), ("1.5G", 1536), ("2048K", 2), ("8GB", 8192),
     ("16gib", 16384), ("1K", 1)],
    ids=["G", "M", "bare-is-MiB", "T", "fraction", "K", "GB", "GiB-lower", "K-rounds-up"],
)  # fmt: skip
def test_memory_sizes(text: str, mib: int) -> None:
    assert parse_mem(text) == mib


@pytest.mark.parametrize("text", ["", "G", "12X", "-1G", "lots"])
def test_bad_memory_names_the_flag(text: str) -> None:
    with pytest.raises(UsageError, match=r"^--mem: .* e\.g\. 64G or 512M"):
        parse_mem(text)
