"""Every `vitkit ...` command in the README's code blocks exists in the CLI, and the README names every command."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

from vitkit.cli import app

README = Path(__file__).parents[2] / "README.md"


def _is_group(command: Any) -> bool:
    return hasattr(command, "commands")  # typer's groups (its own click)


def _command_paths(group: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    paths = set()
    for name, command in group.commands.items():
        paths.add((*prefix, name))
        if _is_group(command):
            paths |= _command_paths(command, (*prefix, name))
    return paths


def _readme_commands() -> list[tuple[str, ...]]:
    """The command words of each `vitkit` line in the README's code blocks (up to the first argument)."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", README.read_text(), flags=re.S)
    found = []
    for line in (line for block in blocks for line in block.splitlines()):
        match = re.search(r"(?:^|\s|/)vitkit\s+(.*)", line.split("#")[0])
        if match:
            words = []
            for word in match.group(1).split():
                if not re.fullmatch(r"[a-z][a-z0-9-]*", word):
                    break
                words.append(word)
            found.append(tuple(words))
    return found


def test_readme_commands_exist_and_every_command_is_shown():
    cli = typer.main.get_command(app)
    assert _is_group(cli)
    known = _command_paths(cli)
    shown = _readme_commands()
    assert len(shown) > 20
    unknown = [" ".join(c) for c in shown if c and not _names_a_command(cli, c)]
    assert unknown == []
    leaves = {p for p in known if not _is_group(_resolve(cli, p))}
    text = README.read_text()  # a command may be shown in a code block or named in the text
    missing = sorted(" ".join(p) for p in leaves if f"vitkit {' '.join(p)}" not in text)
    assert missing == []


def _names_a_command(cli: Any, words: tuple[str, ...]) -> bool:
    """Whether the words walk down to a command: through groups by name; after a command, arguments follow."""
    command = cli
    for word in words:
        if not _is_group(command):
            return True
        if word not in command.commands:
            return False
        command = command.commands[word]
    return True  # a group named alone prints its help


def _resolve(group: Any, path: tuple[str, ...]) -> Any:
    command = group
    for name in path:
        command = command.commands[name]
    return command
