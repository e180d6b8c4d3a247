"""The CLI: every subcommand's --help explains every option."""

from __future__ import annotations

import pytest

from worldsim.cli import build_parser
from worldsim.cli import main as cli_main

COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


def test_the_pipeline_steps_are_all_there() -> None:
    assert {"envs", "collect", "train", "dream", "play", "train-agent", "eval", "run"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    sub = build_parser()._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    for action in sub._actions:
        assert action.help, f"option {action.option_strings} of {command} has no help"
        for flag in action.option_strings:
            assert flag in text
