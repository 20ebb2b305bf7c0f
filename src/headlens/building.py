"""HRV construction: generate images from prompts while every head votes (spec §3–4).

``build(pipe, concepts, prompts, ...)`` is the one-call API. Underneath, :class:`HRVBuilder` runs
batches of prompts through the unmodified pipeline with a :class:`~headlens.capture.VoteCapture`
installed, checkpoints vote counts atomically, and resumes exactly. Every prompt gets its own
generators derived from ``(seed, prompt index)``, so the counts do not depend on how prompts are
split into runs, checkpoints or processes (only on the batch size, which fixes batch composition).

Scale features (docs/scale.md): ``build(..., shard=(i, n))`` runs every n-th batch (merge the parts
with ``headlens merge``); under ``torchrun``/``accelerate launch`` the batches are split over the
processes (batch b → rank b % N) and the counts summed, rank 0 writing; ``per_prompt=True`` keeps
per-prompt vote counts for bootstrap intervals; ``until_stable=K`` stops once every concept's top-k
heads have not changed for K prompts. Checkpoints are one atomically replaced safetensors file that
carries its own description, so a kill at any moment leaves the last complete checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import __version__
from .attention import Session
from .capture import CONCEPT_KEYS, VARIANTS, VoteCapture, derived_seed, encode_concept_words
from .concepts import ConceptSet, load_prompts, prompts_fingerprint
from .heads import HeadIndex
from .hrv import HRV, _atomic_write

CHECKPOINT_FILE = "checkpoint.safetensors"
CHECKPOINT_META = "checkpoint.json"  # a readable copy; the truth travels inside the safetensors file
PROMPT_VOTES_FILE = "prompt_votes.safetensors"
_META_KEY = "headlens_checkpoint"

SCHEDULERS = {
    "ddim": "DDIMScheduler", "pndm": "PNDMScheduler", "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler", "dpm": "DPMSolverMultistepScheduler",
    "lms": "LMSDiscreteScheduler", "heun": "HeunDiscreteScheduler", "unipc": "UniPCMultistepScheduler",
}


class CheckpointMismatchError(ValueError):
    """A checkpoint belongs to another run (model, concepts, prompts or settings differ)."""


class DiskSpaceError(OSError, ValueError):
    """Too little free disk space for a build's output (an OSError; a ValueError so the CLI shows one line)."""


@dataclass
class BuildSettings:
    """Everything that determines the vote counts of a build."""

    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    batch_size: int = 1
    seed: int = 22
    variant: str = "reference"
    start_token: bool = True
    height: int | None = None
    width: int | None = None
    scheduler: str | None = None
    negative_prompt: str | None = None
    concept_keys: str = "probes"  # joint attention (SD3, FLUX): "probes" or "text-only"

    def validate(self) -> None:
        """One-line errors for impossible settings."""
        if self.concept_keys not in CONCEPT_KEYS:
            raise ValueError(f"unknown concept_keys {self.concept_keys!r}: use one of {', '.join(CONCEPT_KEYS)}")
        if self.num_inference_steps < 1:
            raise ValueError(f"steps must be ≥ 1 (got {self.num_inference_steps})")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be ≥ 1 (got {self.batch_size})")
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}: use one of {', '.join(VARIANTS)}")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}: use one of {', '.join(SCHEDULERS)}")
        for name in ("height", "width"):
            v = getattr(self, name)
            if v is not None and (v < 8 or v % 8):
                raise ValueError(f"{name} must be a positive multiple of 8 (got {v})")


@dataclass
class BuildProgress:
    """What a progress callback learns after each batch."""

    prompts_done: int
    prompts_total: int
    images_per_second: float
    elapsed: float


def model_name(pipe) -> str:
    """Best available name of a pipeline's model (hub id or folder)."""
    for obj in (pipe, getattr(pipe, "unet", None), getattr(pipe, "transformer", None)):
        cfg = getattr(obj, "config", None)
        name = cfg.get("_name_or_path") if hasattr(cfg, "get") else getattr(cfg, "_name_or_path", None)
        if name:
            return _world_alias(str(name))
    return type(pipe).__name__


def _world_alias(name: str) -> str:
    """'world' for the bundled world model's folder (not the package's absolute path); other names as they are."""
    try:
        from .world import MODEL_NAMES, model_path

        if Path(name).is_absolute():
            for cli_name, variant in MODEL_NAMES.items():
                if cli_name != "default" and Path(name).resolve() == model_path(variant).resolve():
                    return cli_name
    except (ImportError, OSError, ValueError):
        pass
    return name


def _portable_name(name: str) -> str:
    """A local model folder by its last part (the same model copied elsewhere stays the same run); hub ids as is."""
    p = Path(name)
    return p.name if p.is_absolute() or p.exists() else name


def weights_fingerprint(pipe) -> str:
    """Short hash of a sample of every UNet and text-encoder parameter (tells same-shaped models apart)."""
    import hashlib

    h = hashlib.sha256()
    for part in ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3"):
        module = getattr(pipe, part, None)
        if module is None or not hasattr(module, "named_parameters"):
            continue
        for name, p in module.named_parameters():
            h.update(f"{part}.{name}:{tuple(p.shape)}:{p.dtype}".encode())
            if p.device.type == "meta":  # offloaded weights: shapes only
                continue
            flat = p.detach().reshape(-1)
            h.update(flat[:: max(1, flat.numel() // 8)][:8].to("cpu", torch.float32).numpy().tobytes())
    return h.hexdigest()[:16]


class HRVBuilder:
    """Resumable, batched HRV construction on one pipeline.

    ``per_prompt=True`` also keeps each prompt's votes summed over timesteps (``prompt_votes``,
    ``[prompts, heads, concepts]``), the input of bootstrap intervals (:mod:`headlens.convergence`).
    """

    def __init__(self, pipe, concepts, prompts, settings: BuildSettings | None = None, *, per_prompt: bool = False):
        self.pipe = pipe
        self.concepts = ConceptSet.coerce(concepts)
        self.prompts = load_prompts(prompts)
        self.settings = settings or BuildSettings()
        self.settings.validate()
        from .families import family_of

        self.family = family_of(pipe)
        self.denoiser = self.family.denoiser(pipe)
        self.heads = HeadIndex.from_model(self.denoiser)
        self.device = self.denoiser.device
        self.votes = torch.zeros((0, len(self.heads), len(self.concepts)), dtype=torch.int64)
        self.batches_done: set[int] = set()
        self.per_prompt = per_prompt
        self.prompt_votes: torch.Tensor | None = None  # [P, H, C] int16 (rows of done prompts filled)
        self.checkpoint_extra: dict = {}  # free-form state saved with checkpoints (e.g. stability tracking)
        self._tokens = None

    # ------------------------------------------------------------------ identity
    @property
    def num_batches(self) -> int:
        """Number of batches the prompts split into."""
        bs = self.settings.batch_size
        return (len(self.prompts) + bs - 1) // bs

    def batch_prompts(self, b: int) -> list[int]:
        """Prompt indices of batch ``b``."""
        bs = self.settings.batch_size
        return list(range(b * bs, min((b + 1) * bs, len(self.prompts))))

    def fingerprint(self) -> dict:
        """What a checkpoint must match to be resumed."""
        if getattr(self, "_weights", None) is None:
            self._weights = weights_fingerprint(self.pipe)
        settings = asdict(self.settings)
        if not self.family.joint:
            settings.pop("concept_keys")  # cross-attention models have one kind of concept key
        return {
            "model": _portable_name(model_name(self.pipe)), "weights": self._weights, "heads": self.heads.fingerprint,
            "concepts": self.concepts.fingerprint, "prompts": prompts_fingerprint(self.prompts),
            "num_prompts": len(self.prompts), "settings": settings,
        }

    def metadata(self) -> dict:
        """Run description stored in the HRV's JSON."""
        s = self.settings
        return {
            "model": model_name(self.pipe), "pipeline": type(self.pipe).__name__,
            "head_layout": self.heads.fingerprint, "num_heads": len(self.heads),
            "prompts_fingerprint": prompts_fingerprint(self.prompts), "num_prompts": len(self.prompts),
            "prompts_done": sum(len(self.batch_prompts(b)) for b in self.batches_done),
            "num_inference_steps": s.num_inference_steps, "unet_evaluations": int(self.votes.shape[0]),
            "scheduler": getattr(self, "scheduler_name", type(self.pipe.scheduler).__name__), "guidance_scale": s.guidance_scale, "seed": s.seed,
            "batch_size": s.batch_size, "variant": s.variant, "start_token": s.start_token,
            **({"start_token_used": s.start_token and self.family.text_layout(self.pipe).start_position is not None}
               if self.family.name != "unet" else {}),
            "height": s.height, "width": s.width, "negative_prompt": s.negative_prompt,
            "vae_scale_factor": int(getattr(self.pipe, "vae_scale_factor", 8)),
            "latent_size": _latent_size(self.pipe, s),
            "dtype": str(self.denoiser.dtype).replace("torch.", ""), "headlens_version": __version__,
            "family": self.family.name, **({"concept_keys": s.concept_keys} if self.family.joint else {}),
            "num_batches": self.num_batches, "batches_done": batch_ranges(self.batches_done),
            "build_fingerprint": self.fingerprint(), "per_prompt": self.prompt_votes is not None,
        }

    # ------------------------------------------------------------------ running
    def run(self, batches: Iterable[int] | None = None, *, on_batch: Callable[[HRVBuilder, BuildProgress], None] | None = None,
            progress: bool = False) -> None:
        """Generate the given batches (default: all not yet done), accumulating votes."""
        todo = [b for b in (range(self.num_batches) if batches is None else batches) if b not in self.batches_done]
        if not todo:
            return
        total = sum(len(self.batch_prompts(b)) for b in todo)
        bar = _progress_bar(total) if progress else None
        start, done = time.perf_counter(), 0
        try:
            with self.generating() as generate:
                for b in todo:
                    n = generate(b)
                    done += n
                    elapsed = time.perf_counter() - start
                    info = BuildProgress(self.prompts_done(), len(self.prompts), done / max(elapsed, 1e-9), elapsed)
                    if bar is not None:
                        bar[0].update(bar[1], advance=n, ips=info.images_per_second)
                    if on_batch is not None:
                        on_batch(self, info)
        finally:
            if bar is not None:
                bar[0].stop()

    def prompts_done(self, batches: Iterable[int] | None = None) -> int:
        """Number of prompts in the given batches (default: the done ones)."""
        return sum(len(self.batch_prompts(b)) for b in (self.batches_done if batches is None else batches))

    @contextmanager
    def generating(self):
        """Install the vote capture (and scheduler) once; yields ``generate(b)`` that runs batch ``b``.

        ``generate`` returns the number of prompts it generated. Everything is put back on exit.
        """
        s = self.settings
        if self._tokens is None:
            self._tokens = encode_concept_words(self.pipe, self.concepts, self.device)
        capture = VoteCapture(self._tokens, self.heads, len(self.concepts), variant=s.variant,
                              start_token=s.start_token, device=self.device, per_image=self.per_prompt,
                              concept_keys=s.concept_keys)
        original_scheduler = self.pipe.scheduler
        try:
            if s.scheduler is not None:
                import diffusers

                cls = getattr(diffusers, SCHEDULERS[s.scheduler])
                self.pipe.scheduler = cls.from_config(original_scheduler.config)
            self.scheduler_name = type(self.pipe.scheduler).__name__
            self.pipe.scheduler.set_timesteps(s.num_inference_steps, device=self.device)
            self._ensure_shape(len(self.pipe.scheduler.timesteps))

            def generate(b: int) -> int:
                idx = self.batch_prompts(b)
                self._generate(capture, idx)
                capture.finish_batch()
                if self.per_prompt:
                    self._store_prompt_votes(idx, capture.image_votes)
                capture.votes = self._merge(capture.votes)
                self.batches_done.add(b)
                return len(idx)

            with Session(self.pipe, [capture], cfg=self.family.uses_cfg(s.guidance_scale)):
                yield generate
        finally:
            self.pipe.scheduler = original_scheduler

    def num_evaluations(self) -> int:
        """UNet evaluations per image (timesteps of the scheduler in use; PNDM: steps + 1)."""
        s = self.settings
        sched = self.pipe.scheduler
        if s.scheduler is not None:
            import diffusers

            sched = getattr(diffusers, SCHEDULERS[s.scheduler]).from_config(sched.config)
        else:
            sched = type(sched).from_config(sched.config)
        sched.set_timesteps(s.num_inference_steps)
        return len(sched.timesteps)

    def _ensure_shape(self, num_evals: int) -> None:
        """Grow the count tensors to ``num_evals`` timesteps (and create the per-prompt store)."""
        if self.votes.shape[0] < num_evals:
            grown = torch.zeros((num_evals, *self.votes.shape[1:]), dtype=torch.int64)
            grown[: self.votes.shape[0]] = self.votes
            self.votes = grown
        if self.per_prompt and self.prompt_votes is None:
            self.prompt_votes = torch.zeros((len(self.prompts), len(self.heads), len(self.concepts)), dtype=torch.int16)

    def _store_prompt_votes(self, idx: list[int], image_votes: torch.Tensor | None) -> None:
        self._ensure_shape(0)
        if image_votes is None:
            raise RuntimeError("per-prompt votes were requested but the capture recorded none")
        self.prompt_votes[idx] = image_votes.to("cpu", torch.int16)

    def _generate(self, capture: VoteCapture, idx: list[int]) -> None:
        s = self.settings
        pipe = self.pipe
        pipe.scheduler.set_timesteps(s.num_inference_steps, device=self.device)
        num_evals = len(pipe.scheduler.timesteps)
        capture.begin_batch(idx, s.seed, num_evals)
        generators = [torch.Generator(device="cpu").manual_seed(derived_seed(s.seed, i, "latents")) for i in idx]
        kwargs = {"prompt": [self.prompts[i] for i in idx], "num_inference_steps": s.num_inference_steps,
                      "guidance_scale": s.guidance_scale, "generator": generators, "output_type": "latent"}
        if s.height:
            kwargs["height"] = s.height
        if s.width:
            kwargs["width"] = s.width
        if s.negative_prompt:
            kwargs["negative_prompt"] = [s.negative_prompt] * len(idx)
        with torch.no_grad():
            pipe(**kwargs)

    def _merge(self, batch_votes: torch.Tensor | None) -> None:
        """Move the batch's device counts into the running total (one host copy per batch)."""
        if batch_votes is None:
            return None
        v = batch_votes.to("cpu")
        if self.votes.shape[0] < v.shape[0]:
            grown = torch.zeros((v.shape[0], *self.votes.shape[1:]), dtype=torch.int64)
            grown[: self.votes.shape[0]] = self.votes
            self.votes = grown
        self.votes[: v.shape[0]] += v
        batch_votes.zero_()
        return batch_votes

    def result(self) -> HRV:
        """The HRV of everything generated so far."""
        if not self.batches_done:
            raise ValueError("no prompt has been generated yet; run the builder first")
        return HRV(self.heads, list(self.concepts.names), self.votes.clone(), self.concepts.to_dict(), self.metadata())

    def prompt_done_mask(self, batches: Iterable[int] | None = None) -> torch.Tensor:
        """``[prompts]`` bool: which prompts' votes are in the counts."""
        done = torch.zeros(len(self.prompts), dtype=torch.bool)
        for b in self.batches_done if batches is None else batches:
            done[self.batch_prompts(b)] = True
        return done

    def save_prompt_votes(self, directory: str | Path) -> Path:
        """Write the per-prompt store (``prompt_votes.safetensors``) into ``directory``."""
        if self.prompt_votes is None:
            raise ValueError("this build kept no per-prompt votes; build with per_prompt=True (--per-prompt)")
        return write_prompt_votes(directory, self.prompt_votes, self.prompt_done_mask(), self.fingerprint(),
                                  list(self.concepts.names), int(self.votes.shape[0]))

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_record(self) -> dict:
        """Description stored with a checkpoint (enough to merge it without the model)."""
        return {"fingerprint": self.fingerprint(), "metadata": self.metadata(), "concepts": self.concepts.to_dict(),
                "heads": self.heads.describe()}

    def save_checkpoint(self, directory: str | Path) -> Path:
        """Write the counts and done batches atomically into ``directory``."""
        return write_checkpoint(directory, self.votes, self.batches_done, self.checkpoint_record(),
                                self.prompt_votes, self.checkpoint_extra)

    def load_checkpoint(self, directory: str | Path) -> bool:
        """Continue from a checkpoint in ``directory``; False if there is none. Mismatches are refused."""
        d = Path(directory)
        if not (d / CHECKPOINT_META).exists() and not (d / CHECKPOINT_FILE).exists():
            return False
        meta, tensors = read_checkpoint(d)
        votes = tensors["votes"]
        mine = self.fingerprint()
        theirs = meta.get("fingerprint", {})
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            raise CheckpointMismatchError(
                f"checkpoint in {d} belongs to another run (differs in: {', '.join(diff)}{_diff_detail(mine, theirs, diff)}); "
                "use another --out folder or delete the checkpoint to start over"
            )
        if tuple(votes.shape[1:]) != tuple(self.votes.shape[1:]):
            raise CheckpointMismatchError(
                f"checkpoint in {d} is inconsistent (vote shape {tuple(votes.shape)} does not fit {len(self.heads)} heads × "
                f"{len(self.concepts)} concepts); delete it to start over"
            )
        done = {int(b) for b in meta.get("batches_done", [])}
        if any(b < 0 or b >= self.num_batches for b in done):
            raise CheckpointMismatchError(f"checkpoint in {d} names batches outside 0..{self.num_batches - 1}; delete it to start over")
        pv = tensors.get("prompt_votes")
        if pv is not None:
            if tuple(pv.shape) != (len(self.prompts), len(self.heads), len(self.concepts)) or int(pv.sum()) != int(votes.sum()):
                raise CheckpointMismatchError(
                    f"checkpoint in {d} is inconsistent (per-prompt votes do not add up to the counts); delete it to start over"
                )
            self.per_prompt = True  # keep collecting what the run collected
        elif self.per_prompt and done:
            raise CheckpointMismatchError(
                f"checkpoint in {d} has no per-prompt votes, so --per-prompt cannot be resumed from it; "
                "resume without --per-prompt or start over in another folder"
            )
        self.votes = votes.to(torch.int64)
        self.batches_done = done
        self.prompt_votes = pv.to(torch.int16) if pv is not None else None
        self.checkpoint_extra = dict(meta.get("extra") or {})
        return True


def batch_ranges(batches: Iterable[int]) -> list[list[int]]:
    """Compact ``[[start, stop), ...]`` ranges of a set of batch numbers."""
    out: list[list[int]] = []
    for b in sorted({int(x) for x in batches}):
        if out and out[-1][1] == b:
            out[-1][1] = b + 1
        else:
            out.append([b, b + 1])
    return out


def ranges_to_batches(ranges) -> set[int]:
    """Inverse of :func:`batch_ranges`."""
    return {b for lo, hi in ranges for b in range(int(lo), int(hi))}


def _diff_detail(mine: dict, theirs: dict, keys: list[str]) -> str:
    """': seed 12 vs 11'-style detail for differing settings (checkpoint value second)."""
    parts = []
    if "settings" in keys and isinstance(theirs.get("settings"), dict):
        a, b = mine.get("settings", {}), theirs["settings"]
        parts += [f"{k} {a.get(k)!r} here vs {b.get(k)!r} there" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if "model" in keys:
        parts.append(f"model {mine.get('model')!r} here vs {theirs.get('model')!r} there")
    return ": " + "; ".join(parts) if parts else ""


def write_checkpoint(directory: str | Path, votes: torch.Tensor, batches_done: Iterable[int], record: dict,
                     prompt_votes: torch.Tensor | None = None, extra: dict | None = None) -> Path:
    """Write a checkpoint: one safetensors file (counts + their description), replaced atomically.

    A readable ``checkpoint.json`` copy follows; if a kill falls between the two, the safetensors
    file (newer) wins on load.
    """
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta = dict(record)
    meta.update({"batches_done": sorted(int(b) for b in batches_done), "votes_sum": int(votes.sum()),
                 "headlens_version": __version__, "extra": extra or {}})
    tensors = {"votes": votes.to(torch.int64).contiguous()}
    if prompt_votes is not None:
        tensors["prompt_votes"] = prompt_votes.to(torch.int16).contiguous()
    text = json.dumps(meta, indent=1)
    _atomic_write(d / CHECKPOINT_FILE, lambda p: save_file(tensors, str(p), metadata={_META_KEY: text}))
    _atomic_write(d / CHECKPOINT_META, lambda p: Path(p).write_text(text, encoding="utf-8"))
    return d


def read_checkpoint(directory: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(description, tensors) of a checkpoint; unreadable or inconsistent files raise CheckpointMismatchError."""
    from safetensors import safe_open

    d = Path(directory)
    tf, mf = d / CHECKPOINT_FILE, d / CHECKPOINT_META
    hint = f"delete {CHECKPOINT_FILE} and {CHECKPOINT_META} in {d} to start over"
    if not tf.exists():
        raise CheckpointMismatchError(f"checkpoint in {d} is incomplete ({CHECKPOINT_FILE} is missing); {hint}")
    try:
        with safe_open(str(tf), framework="pt") as f:
            embedded = (f.metadata() or {}).get(_META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
        meta = json.loads(embedded) if embedded is not None else json.loads(mf.read_text(encoding="utf-8"))
        votes = tensors["votes"]
    except Exception as e:  # noqa: BLE001 - truncated, corrupt or half-written files
        raise CheckpointMismatchError(f"checkpoint in {d} is unreadable ({type(e).__name__}); {hint}") from None
    if not isinstance(meta, dict) or votes.ndim != 3 or int(votes.sum()) != int(meta.get("votes_sum", -1)):
        raise CheckpointMismatchError(f"checkpoint in {d} is inconsistent (vote sums or shape differ from its record); {hint}")
    return meta, tensors


def write_prompt_votes(directory: str | Path, prompt_votes: torch.Tensor, done: torch.Tensor, fingerprint: dict,
                       concepts: list[str], num_evaluations: int) -> Path:
    """Save a per-prompt store: ``prompt_votes`` ``[P, H, C]`` (uint8 when it fits, else int16) + ``done`` mask."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    dtype = torch.uint8 if num_evaluations <= 255 else torch.int16
    tensors = {"prompt_votes": prompt_votes.to(dtype).contiguous(), "done": done.to(torch.uint8).contiguous()}
    meta = {"fingerprint": json.dumps(fingerprint), "concepts": json.dumps(list(concepts)),
            "num_evaluations": str(int(num_evaluations)), "format": "headlens-prompt-votes/1"}
    _atomic_write(d / PROMPT_VOTES_FILE, lambda p: save_file(tensors, str(p), metadata=meta))
    return d / PROMPT_VOTES_FILE


def output_bytes(num_evals: int, num_heads: int, num_concepts: int, num_prompts: int = 0, per_prompt: bool = False) -> int:
    """Bytes a build writes at most at once: HRV + checkpoint (+ per-prompt store), each with its temp copy."""
    counts = num_evals * num_heads * num_concepts * 8 + num_heads * num_concepts * 4
    prompts = num_prompts * num_heads * num_concepts * 2 if per_prompt else 0
    return 2 * (2 * counts + 2 * prompts) + 64 * 1024


def _latent_size(pipe, s: BuildSettings) -> list[int]:
    """(height, width) of the latent grid the denoiser's layers saw."""
    from .families import family_of

    family = family_of(pipe)
    h, w = family.generation_size(pipe, s.height, s.width)
    return list(family.latent_size(pipe, h, w))


def _progress_bar(total: int):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]building HRV"), BarColumn(), MofNCompleteColumn(), TextColumn("prompts"),
        TextColumn("{task.fields[ips]:.2f} img/s"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        transient=False,
    )
    task = bar.add_task("build", total=total, ips=0.0)
    bar.start()
    return bar, task


def check_output_dir(out: str | Path, min_free_mb: float = 16, need_bytes: int = 0) -> Path:
    """Fail before any compute if the output folder cannot be written or the disk is (nearly) full.

    Needs ``need_bytes`` (what the build will write, see :func:`output_bytes`) plus ``min_free_mb``.
    """
    d = Path(out)
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / f".headlens-write-test-{os.getpid()}"
        probe.write_bytes(b"0" * 1024)
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"cannot write to output folder {str(d)!r} ({e.strerror}); choose a writable --out") from None
    free = shutil.disk_usage(d).free
    need = need_bytes + min_free_mb * 2**20
    if free < need:
        raise DiskSpaceError(
            f"only {free / 2**20:.0f} MB free in {d}, the build needs {need / 2**20:.0f} MB; "
            "free some disk space or choose another --out"
        )
    return d


def has_checkpoint(directory: str | Path) -> bool:
    """True if ``directory`` holds a build checkpoint (what ``resume`` continues from)."""
    d = Path(directory)
    return (d / CHECKPOINT_META).exists() or (d / CHECKPOINT_FILE).exists()


def build(
    pipe, concepts="default", prompts="default", *, num_inference_steps: int = 50, guidance_scale: float = 7.5,
    batch_size: int = 1, seed: int = 22, variant: str = "reference", start_token: bool = True,
    height: int | None = None, width: int | None = None, scheduler: str | None = None,
    negative_prompt: str | None = None, device=None, dtype=None, out: str | Path | None = None,
    checkpoint_every: int = 0, resume: bool = False, progress: bool = False,
    callback: Callable[[HRVBuilder, BuildProgress], None] | None = None,
    shard: str | tuple[int, int] | None = None, per_prompt: bool = False, until_stable: int = 0,
    stable_top: int = 10, distributed=None, min_free_mb: float = 16, concept_keys: str = "probes",
) -> HRV:
    """Build Head Relevance Vectors for ``concepts`` by generating ``prompts`` with ``pipe``.

    concepts: ConceptSet, dict, concept file or ``"default"``; prompts: list, prompt file or
    ``"default"``. ``variant="reference"`` draws one word per concept per layer call (the paper);
    ``"all-words"`` scores every word deterministically. ``concept_keys`` (SD3, FLUX): ``"probes"``
    (concept-words ride along as probe tokens that see the image) or ``"text-only"`` (each word
    sees only itself). With ``out``, the HRV is saved there and
    counts are checkpointed every ``checkpoint_every`` prompts; ``resume=True`` continues a killed run.

    Scale (docs/scale.md): ``shard="i/N"`` does only batches b with b % N == i (merge parts with
    :func:`headlens.distributed.merge_runs`); ``per_prompt=True`` also keeps per-prompt counts
    (``hrv.prompt_votes``; saved as ``prompt_votes.safetensors``); ``until_stable=K`` stops once no
    concept's top-``stable_top`` head set has changed for K prompts. ``distributed``: None detects
    torchrun/accelerate (``WORLD_SIZE`` > 1), False never, or a :class:`headlens.distributed.Comm`.
    """
    from . import distributed as dist_mod
    from .convergence import StabilityTracker

    if isinstance(distributed, dist_mod.Comm):
        comm = distributed
    else:
        from .families import denoiser_of

        comm = dist_mod.setup(device if device is not None else denoiser_of(pipe).device, enabled=distributed)
    try:
        if device is not None or dtype is not None:
            pipe = pipe.to(device=comm.device_for(device), dtype=dtype)
        settings = BuildSettings(num_inference_steps, guidance_scale, batch_size, seed, variant, start_token,
                                 height, width, scheduler, negative_prompt, concept_keys)
        builder = HRVBuilder(pipe, concepts, prompts, settings, per_prompt=per_prompt)
        run_batches = dist_mod.shard_batches(builder.num_batches, shard)
        if until_stable < 0 or stable_top < 1:
            raise ValueError(f"until_stable must be ≥ 0 and stable_top ≥ 1 (got {until_stable}, {stable_top})")
        if out is not None:
            need = output_bytes(builder.num_evaluations(), len(builder.heads), len(builder.concepts),
                                len(builder.prompts), per_prompt)

            def prepare() -> dict:
                check_output_dir(out, min_free_mb=min_free_mb, need_bytes=need)
                if resume:
                    builder.load_checkpoint(out)
                elif (Path(out) / CHECKPOINT_META).exists() or (Path(out) / CHECKPOINT_FILE).exists():
                    raise FileExistsError(
                        f"{out} holds a checkpoint of an earlier run; pass resume=True (--resume) or use another folder"
                    )
                return {"batches_done": sorted(builder.batches_done), "per_prompt": builder.per_prompt,
                        "extra": builder.checkpoint_extra}

            info = comm.on_root(prepare)
            if not comm.is_root:  # only rank 0 holds the loaded counts; the others start from zero
                builder.batches_done = set(info["batches_done"])
                builder.per_prompt = info["per_prompt"]
                builder.checkpoint_extra = dict(info["extra"])
        tracker = None
        if until_stable:
            tracker = StabilityTracker.from_state(builder.checkpoint_extra.get("stability"), top=stable_top,
                                                  window=until_stable)
        hrv = _drive(builder, comm, run_batches, out, checkpoint_every, tracker, progress, callback)
        comm.barrier()
        return hrv
    finally:
        if not isinstance(distributed, dist_mod.Comm):
            comm.close()


def _drive(builder: HRVBuilder, comm, run_batches: list[int], out, checkpoint_every: int, tracker,
           progress: bool, callback) -> HRV:
    """Generate ``run_batches`` in rounds of one batch per process; reduce, checkpoint and stop when asked."""
    world, rank = comm.world_size, comm.rank
    bs = builder.settings.batch_size
    every_rounds = max(1, math.ceil(checkpoint_every / (bs * world))) if checkpoint_every else 0
    rounds = [run_batches[i : i + world] for i in range(0, len(run_batches), world)]
    done = set(builder.batches_done)  # every process's view of all finished batches
    stopped = tracker is not None and tracker.stable
    pending_total = sum(len(builder.batch_prompts(b)) for b in run_batches if b not in done)
    bar = _progress_bar(pending_total) if progress and comm.is_root and pending_total and not stopped else None
    start, generated, since = time.perf_counter(), 0, 0
    last_round = max((r for r, rnd in enumerate(rounds) if any(b not in done for b in rnd)), default=-1)
    try:
        if pending_total and not stopped:
            with builder.generating() as generate:
                for r, rnd in enumerate(rounds):
                    pending = [b for b in rnd if b not in done]
                    if not pending:
                        continue
                    mine = rnd[rank] if rank < len(rnd) and rnd[rank] in pending else None
                    if mine is not None:
                        n = generate(mine)
                        generated += n
                        if callback is not None:
                            elapsed = time.perf_counter() - start
                            callback(builder, BuildProgress(builder.prompts_done(done | {mine}), len(builder.prompts),
                                                            generated / max(elapsed, 1e-9), elapsed))
                    done.update(pending)
                    since += 1
                    if bar is not None:
                        n_round = sum(len(builder.batch_prompts(b)) for b in pending)
                        bar[0].update(bar[1], advance=n_round,
                                      ips=world * generated / max(time.perf_counter() - start, 1e-9))
                    more = r < last_round
                    if tracker is not None:
                        totals = comm.sum(builder.votes.sum(dim=0))  # [H, C]
                        tracker.update(totals, builder.prompts_done(done))
                        builder.checkpoint_extra["stability"] = tracker.state()
                        if tracker.stable:
                            stopped = more
                            break
                    if out is not None and every_rounds and since >= every_rounds and more:
                        since = 0
                        _save_global_checkpoint(builder, comm, done, out)
    finally:
        if bar is not None:
            bar[0].stop()
    # the sum over processes becomes every process's result
    if comm.distributed:
        builder.votes = comm.sum(builder.votes)
        if builder.prompt_votes is not None or builder.per_prompt:
            builder._ensure_shape(0)
            builder.prompt_votes = comm.sum(builder.prompt_votes)
    builder.batches_done = done
    hrv = builder.result()
    if tracker is not None:
        hrv.metadata["until_stable"] = {**tracker.state(), "stopped_early": bool(stopped),
                                       "prompts_used": builder.prompts_done()}
    if builder.prompt_votes is not None:
        hrv.prompt_votes = builder.prompt_votes  # [P, H, C]; rows of prompts not done are zero
        hrv.prompt_done = builder.prompt_done_mask()
    if out is not None and comm.is_root:
        builder.save_checkpoint(out)  # first: a kill while writing the HRV loses nothing
        if builder.prompt_votes is not None:
            builder.save_prompt_votes(out)
        hrv.save(out)
    return hrv


def _save_global_checkpoint(builder: HRVBuilder, comm, done: set[int], out) -> None:
    """Checkpoint the counts of all processes (rank 0 writes)."""
    if not comm.distributed:
        builder.save_checkpoint(out)
        return
    votes = comm.sum(builder.votes)
    pv = comm.sum(builder.prompt_votes) if builder.prompt_votes is not None else None
    if comm.is_root:
        write_checkpoint(out, votes, done, {**builder.checkpoint_record(), "metadata": {
            **builder.metadata(), "batches_done": batch_ranges(done),
            "prompts_done": builder.prompts_done(done)}}, pv, builder.checkpoint_extra)


def env_flag(name: str) -> bool:
    """True if an environment variable is set to a truthy value."""
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
