"""Every command line in the integration guides (docs/guides/*.md) is accepted by the CLI it names,
so a guide cannot drift from the flags that exist."""
import re
import shlex
from pathlib import Path

import pytest

from mm2face.realtime import cli as live_cli
from mm2face.viewer import cli as view_cli

GUIDES = sorted((Path(__file__).resolve().parents[1] / "docs" / "guides").glob("*.md"))
PARSERS = {"mm2face-live": live_cli.build_parser, "mm2face-view": view_cli.build_parser}


def _commands():
    for guide in GUIDES:
        in_code = False
        for line in guide.read_text().splitlines():
            if line.startswith("```"):
                in_code = not in_code
                continue
            prog = line.split(" ", 1)[0]
            if in_code and prog in PARSERS:
                yield guide.name, line


COMMANDS = list(_commands())


def test_the_guides_have_commands():
    names = {g.name for g in GUIDES}
    assert {"browser.md", "unreal-livelink.md", "vseeface-warudo-vmc.md", "unity.md", "godot.md"} <= names
    assert {g for g, _ in COMMANDS} >= names - {"README.md"}      # each guide gives its command line


@pytest.mark.parametrize("guide, line", COMMANDS, ids=[f"{g}:{i}" for i, (g, _) in enumerate(COMMANDS)])
def test_guide_command_parses(guide, line):
    line = re.sub(r'"\$\([^)]*\)"', "TOKEN", line)          # "$(openssl rand -hex 16)" -> a token
    argv = shlex.split(line, comments=True)
    try:
        PARSERS[argv[0]]().parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"{guide}: `{line}` is refused by {argv[0]} (exit {exc.code})")
