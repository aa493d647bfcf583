import shutil
import subprocess
import sys

import pytest

from loopcoder.jobs.cli import COMMAND_GROUPS, UserError, main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    executable = shutil.which("loopcoder")
    command = [executable] if executable else [sys.executable, "-m", "loopcoder.jobs.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120)


def test_console_command_lists_every_group():
    result = run_cli("--help")
    assert result.returncode == 0
    for group in ["data", "shards", "model", "train", "sandbox", "tokenizer"]:
        assert group in result.stdout


@pytest.mark.parametrize("group", sorted(COMMAND_GROUPS))
def test_each_group_explains_itself(group, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([group, "--help"])
    assert exit_info.value.code == 0
    assert COMMAND_GROUPS[group].capitalize() in capsys.readouterr().out


def test_group_without_command_prints_its_help(capsys):
    assert main(["data"]) == 0
    assert "sample-corpus" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "frobnicate"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_errors_are_one_line_unless_debug(tmp_path):
    missing = tmp_path / "missing.yaml"
    result = run_cli("data", "sample-corpus", "--config", str(missing))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"loopcoder: error: config {missing} does not exist (rerun with --debug for the traceback)"
    ]
    debug = run_cli("--debug", "data", "sample-corpus", "--config", str(missing))
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr


def test_unexpected_exceptions_name_their_type(monkeypatch, capsys):
    def explode(_args):
        raise RuntimeError("disk on fire")

    def user_mistake(_args):
        raise UserError("--loops must be between 1 and 4")

    parser_main = main.__globals__["build_parser"]

    def build_with(handler):
        def build():
            parser = parser_main()
            parser.set_defaults(handler=handler)
            return parser

        return build

    monkeypatch.setitem(main.__globals__, "build_parser", build_with(explode))
    assert main([]) == 1
    assert "loopcoder: error: RuntimeError: disk on fire" in capsys.readouterr().err
    monkeypatch.setitem(main.__globals__, "build_parser", build_with(user_mistake))
    assert main([]) == 1
    assert "loopcoder: error: --loops must be between 1 and 4 (rerun" in capsys.readouterr().err
