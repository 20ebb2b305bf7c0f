"""Shared CLI helpers: model loading, devices, output paths, seed ranges, clean one-line errors."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

# Library chatter (e.g. "requires torchvision") is not for CLI users; real errors still surface.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import typer
from rich.console import Console

from headlens.world import GENERATION as _WORLD

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

MODEL_HELP = ("Hub id or local pipeline folder; 'world' = the bundled model ('world-joint': its jointly trained "
              "contrast), 'tiny', 'tiny-pixart', 'tiny-sd3', 'tiny-flux' = random tiny smoke-test models.")
DEVICE_HELP = "Torch device: cpu, cuda, cuda:1, mps (checked before the model loads)."
DTYPE_HELP = "float32, float16 or bfloat16."
# Default generation settings per model: the bundled world models' own good setting, the reference's for SD.
SD_STEPS, SD_GUIDANCE = 50, 7.5
STEPS_HELP = (f"Denoising steps per image (default: the model's own — {_WORLD['num_inference_steps']} for the bundled "
              f"world models, {SD_STEPS} otherwise).")
GUIDANCE_HELP = (f"Classifier-free guidance scale (default: the model's own — {_WORLD['guidance_scale']:g} for the "
                 f"bundled world models, {SD_GUIDANCE:g} otherwise).")
DRY_RUN_HELP = ("Only print the number of generations and an estimated time (from a short calibration run), "
                "then stop without writing anything.")


class UserError(Exception):
    """A problem with the user's input; its message names the problem and the fix."""


# Output folders this invocation created; removed again if the run fails while they hold no file.
_created_outputs: list[Path] = []


def run_app(app: typer.Typer) -> int:
    """Run a typer app; user errors (and usage errors) become `error: ...` on one line."""
    _created_outputs.clear()
    code = 0
    try:
        app(standalone_mode=False)
    except SystemExit as e:  # pragma: no cover - typer/click exit
        code = int(e.code or 0)
    except (UserError, *USER_ERRORS) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
        code = 2
    except Exception as e:  # click usage errors and the like (typer may vendor its own click)
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            code = int(e.exit_code)
            ctx = getattr(e, "ctx", None)
            where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            msg = e.format_message().rstrip(".")
            console.print(f"[bold red]error:[/] {msg[:1].lower() + msg[1:]}{where}", highlight=False, soft_wrap=True)
        elif type(e).__name__ == "Abort":
            console.print("aborted")
            code = 130
        else:
            _remove_empty_outputs()
            raise
    if code not in (0, None):
        _remove_empty_outputs()
    _created_outputs.clear()
    return code


def _remove_empty_outputs() -> None:
    """Remove the output folders this run created if they hold no file (only empty folders)."""
    for d in reversed(_created_outputs):
        if d.is_dir() and not any(p.is_file() or p.is_symlink() for p in d.rglob("*")):
            shutil.rmtree(d, ignore_errors=True)
    _created_outputs.clear()


# ---------------------------------------------------------------------------------------------- checks
def at_least(value: float | None, minimum: float, flag: str) -> None:
    """One-line error unless ``value`` (when given) is ≥ ``minimum``."""
    if value is not None and value < minimum:
        raise UserError(f"{flag} must be ≥ {minimum:g} (got {value:g})")


THREADS_HELP = ("torch CPU threads; 0 = torch's default (one per core). 1 is bit-reproducible and fastest when "
                "another job shares the machine's cores.")


def set_threads(threads: int) -> int:
    """--threads: set torch's CPU thread count (0 keeps torch's default); return the count in use."""
    import torch

    at_least(threads, 0, "--threads")
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def check_size(size: int | None) -> None:
    """--size: a positive multiple of 8."""
    if size is not None and (size < 8 or size % 8):
        raise UserError(f"--size must be a positive multiple of 8 (got {size})")


def check_device(device: str) -> str:
    """Fail in one line, before any model loads, when ``device`` does not exist on this machine."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown --device {device!r}: use cpu, cuda, cuda:N or mps") from None
    kind = dev.type
    if kind == "cpu":
        return device
    if kind == "cuda":
        if not torch.cuda.is_available():
            why = "this torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise UserError(f"--device {device}: CUDA is not available ({why}); use --device cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise UserError(f"--device {device}: there is no GPU {dev.index} (this machine has {n}: "
                            f"{', '.join(f'cuda:{i}' for i in range(n))})")
        return device
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UserError(f"--device {device}: Apple MPS is not available on this machine; use --device cpu")
        return device
    backend = getattr(torch, kind, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise UserError(f"--device {device}: {kind} is not available on this machine; use --device cpu")
    return device


def check_hrv_dir(path: Path | None, flag: str = "--hrv") -> Path | None:
    """An HRV folder that exists and holds hrv.json (checked before any model loads)."""
    if path is None:
        return None
    if str(path).startswith(("paper:", "hf:/")):  # a shipped or Hub HRV: HRV.load resolves it
        return path
    p = Path(path)
    if not p.exists():
        raise UserError(f"{flag} {str(p)!r} does not exist; create it with `headlens build --out {p}`")
    if not p.is_dir():
        raise UserError(f"{flag} {str(p)!r} is a file; give the HRV folder `headlens build` wrote")
    if not (p / "hrv.json").is_file():
        raise UserError(f"{flag} {str(p)!r} holds no hrv.json; give the HRV folder `headlens build` wrote")
    return p


def output_folder(path: Path, flag: str = "--out", create: bool = True) -> Path:
    """Check (and create) an output folder before anything is loaded or computed.

    A file in its place or a folder that cannot be written is a one-line error naming ``flag``.
    Folders created here are removed again if the run fails while they are still empty.
    ``create=False`` (dry runs) only checks, writing nothing.
    """
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise UserError(f"{flag} {str(d)!r} is a file; give a folder (it is created if missing)")
    missing = []
    p = d
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {str(d)!r}: {str(p)!r} is a file, not a folder; choose another {flag}")
    if not create:  # a dry run: an anonymous temporary file (gone when closed) tests the nearest existing folder
        try:
            with tempfile.TemporaryFile(dir=p):
                pass
        except OSError as e:
            raise UserError(f"cannot write to {flag} folder {str(d)!r} ({str(p)!r}: {e.strerror or e}); choose a "
                            f"writable {flag}") from None
        return d
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {flag} folder {str(d)!r} ({e.strerror or e}); choose a writable {flag}") from None
    if missing:
        _created_outputs.append(missing[-1])
    probe = d / f".headlens-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"0")
        probe.unlink()
    except OSError as e:
        if missing:
            shutil.rmtree(missing[-1], ignore_errors=True)
            _created_outputs.remove(missing[-1])
        raise UserError(f"cannot write to {flag} folder {str(d)!r} ({e.strerror or e}); choose a writable {flag}") from None
    return d


def check_fresh(out: Path, resume: bool, results: str = "scores.csv", flag: str = "--out") -> None:
    """Refuse, before any work, a folder that already holds results unless --resume is given."""
    f = Path(out) / results
    if not resume and f.is_file() and len(f.read_text(encoding="utf-8").splitlines()) > 1:
        raise UserError(f"{flag} {str(out)!r} already holds results ({results}); add --resume to continue that run "
                        f"or choose another {flag}")


def output_file(path: Path, flag: str = "--out", suffixes: tuple[str, ...] = (".html",), what: str = "file") -> Path:
    """Check an output file name before any work: right suffix, not a folder, parent writable."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{flag} {str(p)!r} is a folder; give a {what} name ending in {suffixes[0]}")
    if p.suffix.lower() not in suffixes:
        raise UserError(f"{flag} {str(p)!r}: the {what} is written as {suffixes[0][1:].upper()}; give a name ending "
                        f"in {' or '.join(suffixes)}")
    parent = p.parent if str(p.parent) else Path(".")
    q = parent
    while not q.exists() and q.parent != q:
        q = q.parent
    if q.exists() and not q.is_dir():
        raise UserError(f"{flag} {str(p)!r}: {str(q)!r} is a file, not a folder; choose another {flag}")
    output_folder(parent, flag)
    return p


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


def default_steps(model: str) -> int:
    """The model's own default number of denoising steps."""
    if is_world(model):
        from headlens.world import GENERATION

        return int(GENERATION["num_inference_steps"])
    return SD_STEPS


def default_guidance(model: str) -> float:
    """The model's own default guidance scale."""
    if is_world(model):
        from headlens.world import GENERATION

        return float(GENERATION["guidance_scale"])
    return SD_GUIDANCE


def generation_defaults(model: str, steps: int | None, guidance: float | None) -> tuple[int, float]:
    """--steps and --guidance with the model's defaults filled in and checked."""
    steps = default_steps(model) if steps is None else steps
    guidance = default_guidance(model) if guidance is None else guidance
    at_least(steps, 1, "--steps")
    at_least(guidance, 0, "--guidance")
    return steps, guidance


def model_label(model: str) -> str:
    """How run files and tables name the model: its CLI name ('world', 'world-joint', 'tiny', a hub id), never
    the package's absolute folder."""
    return str(model)


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


TINY_MODELS = {
    "tiny": "tiny_sd_pipeline", "tiny-pixart": "tiny_pixart_pipeline", "tiny-sd3": "tiny_sd3_pipeline",
    "tiny-flux": "tiny_flux_pipeline",
}


def load_model(model: str, device: str = "cpu", dtype: str = "float32"):
    """A diffusers text-to-image pipeline from a hub id, a local folder, 'world', 'world-joint' or a tiny model.

    Tiny models (random weights, seeded): ``tiny`` (SD1-style), ``tiny-pixart``, ``tiny-sd3``, ``tiny-flux``.
    """
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
        raise UserError(f"unknown --dtype {dtype!r}: use float32, float16 or bfloat16")
    check_device(device)
    _quiet_loading()
    from headlens import world

    if world.variant_of(model):
        pipe = world.load_pipeline(variant=world.variant_of(model))
    elif model in TINY_MODELS:
        from headlens import testing

        pipe = getattr(testing, TINY_MODELS[model])()
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
    from headlens.families import UnsupportedModelError, family_of

    try:
        denoiser = family_of(pipe).denoiser(pipe)
    except UnsupportedModelError as e:
        raise UserError(f"model {model!r}: {e}") from None
    if denoiser.dtype != torch_dtype or str(denoiser.device) != str(torch.device(device)):
        pipe = pipe.to(device=device, dtype=torch_dtype)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe


def _quiet_loading() -> None:
    """No 'Loading pipeline components' / 'Loading weights' bars between the CLI's own lines."""
    with contextlib.suppress(ImportError):
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


def check_dtype(dtype: str) -> None:
    """--dtype: one of the supported names."""
    if dtype not in ("float32", "fp32", "float16", "fp16", "bfloat16", "bf16"):
        raise UserError(f"unknown --dtype {dtype!r}: use float32, float16 or bfloat16")


# ---------------------------------------------------------------------------------------------- dry runs
def calibrate(run: Callable[[int], None], steps: int) -> float:
    """Seconds one call of ``run`` takes at ``steps`` steps, fitted from timed calls at 1 and a few steps.

    Each is timed twice and the faster kept (a busy machine only ever adds time); the per-step cost
    comes from the difference, the rest (text encoding, decoding) is counted once per call.
    """
    few = max(2, min(int(steps), 5))
    run(1)  # warm-up: first calls pay for lazy initialisation

    def best(n: int) -> float:
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            run(n)
            times.append(time.perf_counter() - t0)
        return min(times)

    one, many = best(1), best(few)
    per_step = max((many - one) / (few - 1), 0.0)
    fixed = max(one - per_step, 0.0)
    return fixed + per_step * steps


def human_time(seconds: float) -> str:
    """'40 s', '12 min', '3.5 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def report_cost(generations: int, per_image: float | None, what: str = "generations") -> None:
    """The dry-run line: number of generations and the estimated time (stdout)."""
    if per_image is None:
        stdout(f"dry run: {generations} {what}")
        return
    stdout(f"dry run: {generations} {what}, about {human_time(generations * per_image)} on this machine "
           f"({per_image:.2g} s per image, calibrated)")


def echo(msg: str) -> None:
    """Print a status line to stderr."""
    console.print(msg, highlight=False)


def warn(msg: str) -> None:
    """Print a warning line to stderr."""
    console.print(f"[bold yellow]warning:[/] {msg}", highlight=False, soft_wrap=True)


def fail(msg: str) -> None:
    """Stop with a one-line user error."""
    raise UserError(msg)


def stdout(msg: str) -> None:
    """Print a result line to stdout."""
    sys.stdout.write(msg + "\n")
