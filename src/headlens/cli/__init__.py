"""The `headlens` command line: one typer app, one module per command group."""

from __future__ import annotations

import importlib
import sys

import typer

app = typer.Typer(
    name="headlens",
    help="Find and steer the cross-attention heads of text-to-image diffusion models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



def _print_version(value: bool) -> None:
    """--version: print the version and stop (eager: works without a command)."""
    if value:
        from headlens import __version__

        typer.echo(f"headlens {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the headlens version and exit.", is_eager=True,
                                 callback=_print_version),
) -> None:
    """Find and steer the cross-attention heads of text-to-image diffusion models."""


# Each module registers its commands on `app` when imported. Add new command modules here.
COMMAND_MODULES = [
    "headlens.cli.build_cmd",
    "headlens.cli.steer_cmd",
    "headlens.cli.apps_cmd",
    "headlens.cli.show_cmd",
    "headlens.cli.scale_cmd",
    "headlens.cli.world_cmd",
    "headlens.cli.demo_cmd",
    "headlens.cli.hub_cmd",
    "headlens.cli.reproduce_cmd",
]

for _name in COMMAND_MODULES:
    try:
        importlib.import_module(_name)
    except ModuleNotFoundError as e:  # a command group that is not written yet
        if e.name != _name:
            raise


def main() -> None:
    """Console entry point: run the app, turning user errors into one clean line."""
    from .common import run_app

    sys.exit(run_app(app))
