"""Shared CLI helpers: model loading, seed ranges, clean one-line errors."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path

# Library chatter (e.g. "requires torchvision") is not for CLI users; real errors still surface.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import typer
from rich.console import Console

console = Console(stderr=True)
_show_warning = warnings.showwarning


def _show_note(message, category, filename, lineno, file=None, line=None) -> None:
    """headlens notes (e.g. an HRV measured on a sibling model) as one `note:` line; other warnings as usual."""
    from headlens.hrv import HeadlensNote

    if issubclass(category, HeadlensNote):
        console.print(f"note: {message}", highlight=False, soft_wrap=True)
    else:
        _show_warning(message, category, filename, lineno, file, line)


warnings.showwarning = _show_note

# Errors that are the user's to fix: printed as one line, exit code 2, no traceback.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError)


class UserError(Exception):
    """A problem with the user's input; its message names the problem and the fix."""


def run_app(app: typer.Typer) -> int:
    """Run a typer app; user errors become `error: ...` on one line."""
    try:
        app(standalone_mode=False)
    except SystemExit as e:  # pragma: no cover - typer/click exit
        return int(e.code or 0)
    except (UserError, *USER_ERRORS) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
        return 2
    except Exception as e:  # click usage errors and the like (typer may vendor its own click)
        if hasattr(e, "show") and hasattr(e, "exit_code"):
            e.show()
            return int(e.exit_code)
        if type(e).__name__ == "Abort":
            console.print("aborted")
            return 130
        raise
    return 0


def parse_seeds(spec: str) -> list[int]:
    """Seeds from '1-8', '1,5,9' or '3'."""
    seeds: list[int] = []
    try:
        for part in str(spec).split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else ("-" + part[1:].split("-", 1)[0], part[1:].split("-", 1)[1])
                seeds.extend(range(int(lo), int(hi) + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise UserError(f"bad seed list {spec!r}: use e.g. '1-8', '1,5,9' or '3'") from None
    if not seeds:
        raise UserError(f"bad seed list {spec!r}: it names no seed")
    return seeds


def is_world(model: str | None) -> bool:
    """True for the names of the shipped world models ('world', 'world-joint')."""
    from headlens import world

    return world.variant_of(model) is not None


_MODELS: dict | None = None  # while reuse_models() is active: (model, device, dtype) -> pipeline


@contextlib.contextmanager
def reuse_models():
    """Inside, :func:`load_model` loads each (model, device, dtype) once (``headlens reproduce`` runs many commands)."""
    global _MODELS
    outer = _MODELS
    _MODELS = {} if outer is None else outer
    try:
        yield
    finally:
        _MODELS = outer


def load_model(model: str, device: str = "cpu", dtype: str = "float32"):
    """A diffusers text-to-image pipeline from a hub id, a local folder, 'world', 'world-joint' or 'tiny'."""
    if _MODELS is not None:
        key = (model, str(device), str(dtype))
        if key not in _MODELS:
            _MODELS[key] = _load_model(model, device, dtype)
        return _MODELS[key]
    return _load_model(model, device, dtype)


def _load_model(model: str, device: str = "cpu", dtype: str = "float32"):
    import torch

    torch_dtype = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
                   "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}.get(dtype)
    if torch_dtype is None:
        raise UserError(f"unknown dtype {dtype!r}: use float32, float16 or bfloat16")
    from headlens import world

    if world.variant_of(model):
        pipe = world.load_pipeline(variant=world.variant_of(model))
    elif model == "tiny":
        from headlens.testing import tiny_sd_pipeline

        pipe = tiny_sd_pipeline()
    else:
        from diffusers import DiffusionPipeline

        local = Path(model)
        if not local.exists() and (model.startswith((".", "/", "~")) or model.count("/") > 1):
            raise UserError(f"model folder {model!r} does not exist; give a local pipeline folder or a hub id")
        try:
            pipe = DiffusionPipeline.from_pretrained(str(local) if local.exists() else model, torch_dtype=torch_dtype)
        except OSError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot load model {model!r} ({first}); give a local pipeline folder or a reachable hub id") from None
        if not hasattr(pipe, "unet"):
            raise UserError(f"model {model!r} has no UNet; headlens supports SD1.x/2.x/SDXL-style pipelines")
    if pipe.unet.dtype != torch_dtype or str(pipe.unet.device) != str(torch.device(device)):
        pipe = pipe.to(device=device, dtype=torch_dtype)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe


def echo(msg: str) -> None:
    """Print a status line to stderr."""
    console.print(msg, highlight=False)


def fail(msg: str) -> None:
    """Stop with a one-line user error."""
    raise UserError(msg)


def stdout(msg: str) -> None:
    """Print a result line to stdout."""
    sys.stdout.write(msg + "\n")
