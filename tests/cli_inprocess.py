"""Run the `headlens` CLI in this process, as its console entry point does (no subprocess start-up)."""

import sys

from headlens.cli import app
from headlens.cli.common import run_app


def cli_code(monkeypatch, *args) -> int:
    """Run `headlens ARGS`; returns the exit code (the output stays with capsys)."""
    monkeypatch.setattr(sys, "argv", ["headlens", *map(str, args)])
    return run_app(app)


def cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run `headlens ARGS`; returns (exit code, stdout, stderr)."""
    code = cli_code(monkeypatch, *args)
    out = capsys.readouterr()
    return code, out.out, out.err
