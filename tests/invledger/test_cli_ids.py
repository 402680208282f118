"""An id on the command line (--id) is checked where it is parsed: a usage line and exit 2, not a database error
whose traceback went to the log (`invledger outbox retry --id 99999999999999999999` was a bigint overflow)."""

from __future__ import annotations

import pytest

from invledger import cli


@pytest.mark.parametrize("argv", [["outbox", "retry", "--id", "99999999999999999999"],
                                  ["holds", "void", "--id", "0"], ["holds", "post", "--id", "x"]])
def test_an_id_out_of_range_is_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert "argument --id:" in capsys.readouterr().err.splitlines()[-1]


def test_an_id_in_range_is_taken() -> None:
    assert cli.build_parser().parse_args(["outbox", "retry", "--id", str(cli.BIGINT_MAX)]).id == cli.BIGINT_MAX
