"""The ``ams-agent`` entry point. Registration and rotation arrive with the vault (issue 3)."""

from __future__ import annotations

import sys

from ams import __version__


def main() -> None:
    args = sys.argv[1:]
    if args in (["--version"], ["-V"]):
        print(f"ams-agent {__version__}")
        sys.exit(0)
    sys.stderr.write("error: ams-agent has no commands in this version; see `ams-agent --version`\n")
    sys.exit(2)
