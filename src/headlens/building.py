"""HRV construction: generate images from prompts while every head votes (spec §3–4).

``build(pipe, concepts, prompts, ...)`` is the one-call API. Underneath, :class:`HRVBuilder` runs
batches of prompts through the unmodified pipeline with a :class:`~headlens.capture.VoteCapture`
installed, checkpoints vote counts atomically, and resumes exactly. Every prompt gets its own
generators derived from ``(seed, prompt index)``, so the counts do not depend on how prompts are
split into runs, checkpoints or processes (only on the batch size, which fixes batch composition).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from . import __version__
from .attention import Session
from .capture import VARIANTS, VoteCapture, derived_seed, encode_concept_words
from .concepts import ConceptSet, load_prompts, prompts_fingerprint
from .heads import HeadIndex
from .hrv import HRV, _atomic_write

CHECKPOINT_FILE = "checkpoint.safetensors"
CHECKPOINT_META = "checkpoint.json"

SCHEDULERS = {
    "ddim": "DDIMScheduler", "pndm": "PNDMScheduler", "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler", "dpm": "DPMSolverMultistepScheduler",
    "lms": "LMSDiscreteScheduler", "heun": "HeunDiscreteScheduler", "unipc": "UniPCMultistepScheduler",
}


class CheckpointMismatchError(ValueError):
    """A checkpoint belongs to another run (model, concepts, prompts or settings differ)."""


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

    def validate(self) -> None:
        """One-line errors for impossible settings."""
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
    for obj in (pipe, getattr(pipe, "unet", None)):
        cfg = getattr(obj, "config", None)
        name = cfg.get("_name_or_path") if hasattr(cfg, "get") else getattr(cfg, "_name_or_path", None)
        if name:
            return str(name)
    return type(pipe).__name__


class HRVBuilder:
    """Resumable, batched HRV construction on one pipeline."""

    def __init__(self, pipe, concepts, prompts, settings: BuildSettings | None = None):
        self.pipe = pipe
        self.concepts = ConceptSet.coerce(concepts)
        self.prompts = load_prompts(prompts)
        self.settings = settings or BuildSettings()
        self.settings.validate()
        self.heads = HeadIndex.from_unet(pipe.unet)
        self.device = pipe.unet.device
        self.votes = torch.zeros((0, len(self.heads), len(self.concepts)), dtype=torch.int64)
        self.batches_done: set[int] = set()
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
        return {
            "model": model_name(self.pipe), "heads": self.heads.fingerprint,
            "concepts": self.concepts.fingerprint, "prompts": prompts_fingerprint(self.prompts),
            "num_prompts": len(self.prompts), "settings": asdict(self.settings),
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
            "height": s.height, "width": s.width, "negative_prompt": s.negative_prompt,
            "dtype": str(self.pipe.unet.dtype).replace("torch.", ""), "headlens_version": __version__,
        }

    # ------------------------------------------------------------------ running
    def run(self, batches: Iterable[int] | None = None, *, on_batch: Callable[["HRVBuilder", BuildProgress], None] | None = None,
            progress: bool = False) -> None:
        """Generate the given batches (default: all not yet done), accumulating votes."""
        todo = [b for b in (range(self.num_batches) if batches is None else batches) if b not in self.batches_done]
        if not todo:
            return
        s = self.settings
        if self._tokens is None:
            self._tokens = encode_concept_words(self.pipe, self.concepts, self.device)
        capture = VoteCapture(self._tokens, self.heads, len(self.concepts), variant=s.variant,
                              start_token=s.start_token, device=self.device)
        original_scheduler = self.pipe.scheduler
        if s.scheduler is not None:
            import diffusers

            cls = getattr(diffusers, SCHEDULERS[s.scheduler])
            self.pipe.scheduler = cls.from_config(original_scheduler.config)
        self.scheduler_name = type(self.pipe.scheduler).__name__
        total = sum(len(self.batch_prompts(b)) for b in todo)
        bar = _progress_bar(total) if progress else None
        start, done = time.perf_counter(), 0
        try:
            with Session(self.pipe, [capture], cfg=s.guidance_scale > 1.0):
                for b in todo:
                    idx = self.batch_prompts(b)
                    self._generate(capture, idx)
                    capture.votes = self._merge(capture.votes)
                    self.batches_done.add(b)
                    done += len(idx)
                    elapsed = time.perf_counter() - start
                    info = BuildProgress(sum(len(self.batch_prompts(x)) for x in self.batches_done),
                                         len(self.prompts), done / max(elapsed, 1e-9), elapsed)
                    if bar is not None:
                        bar[0].update(bar[1], advance=len(idx), ips=info.images_per_second)
                    if on_batch is not None:
                        on_batch(self, info)
        finally:
            self.pipe.scheduler = original_scheduler
            if bar is not None:
                bar[0].stop()

    def _generate(self, capture: VoteCapture, idx: list[int]) -> None:
        s = self.settings
        pipe = self.pipe
        pipe.scheduler.set_timesteps(s.num_inference_steps, device=self.device)
        num_evals = len(pipe.scheduler.timesteps)
        capture.begin_batch(idx, s.seed, num_evals)
        generators = [torch.Generator(device="cpu").manual_seed(derived_seed(s.seed, i, "latents")) for i in idx]
        kwargs = dict(prompt=[self.prompts[i] for i in idx], num_inference_steps=s.num_inference_steps,
                      guidance_scale=s.guidance_scale, generator=generators, output_type="latent")
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

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, directory: str | Path) -> Path:
        """Write the counts and done batches atomically into ``directory``."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        _atomic_write(d / CHECKPOINT_FILE, lambda p: save_file({"votes": self.votes.contiguous()}, str(p)))
        meta = {"fingerprint": self.fingerprint(), "batches_done": sorted(self.batches_done),
                "votes_sum": int(self.votes.sum()), "headlens_version": __version__}
        _atomic_write(d / CHECKPOINT_META, lambda p: Path(p).write_text(json.dumps(meta, indent=1), encoding="utf-8"))
        return d

    def load_checkpoint(self, directory: str | Path) -> bool:
        """Continue from a checkpoint in ``directory``; False if there is none. Mismatches are refused."""
        from safetensors.torch import load_file

        d = Path(directory)
        mf, tf = d / CHECKPOINT_META, d / CHECKPOINT_FILE
        if not mf.exists() and not tf.exists():
            return False
        try:
            meta = json.loads(mf.read_text(encoding="utf-8"))
            votes = load_file(str(tf))["votes"]
        except Exception as e:  # truncated, corrupt or half-written files
            raise CheckpointMismatchError(
                f"checkpoint in {d} is unreadable ({type(e).__name__}); delete {CHECKPOINT_FILE} and "
                f"{CHECKPOINT_META} to start over"
            ) from None
        mine = self.fingerprint()
        theirs = meta.get("fingerprint", {})
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            raise CheckpointMismatchError(
                f"checkpoint in {d} belongs to another run (differs in: {', '.join(diff)}); use another --out folder "
                "or delete the checkpoint to start over"
            )
        if int(votes.sum()) != int(meta.get("votes_sum", -1)) or tuple(votes.shape[1:]) != tuple(self.votes.shape[1:]):
            raise CheckpointMismatchError(
                f"checkpoint in {d} is inconsistent (vote sums or shape differ from its record); delete it to start over"
            )
        self.votes = votes.to(torch.int64)
        self.batches_done = set(int(b) for b in meta.get("batches_done", []))
        return True


def _progress_bar(total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("[bold]building HRV"), BarColumn(), MofNCompleteColumn(), TextColumn("prompts"),
        TextColumn("{task.fields[ips]:.2f} img/s"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        transient=False,
    )
    task = bar.add_task("build", total=total, ips=0.0)
    bar.start()
    return bar, task


def check_output_dir(out: str | Path, min_free_mb: int = 16) -> Path:
    """Fail before any compute if the output folder cannot be written or the disk is full."""
    d = Path(out)
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / ".headlens-write-test"
        probe.write_bytes(b"0" * 1024)
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"cannot write to output folder {str(d)!r} ({e.strerror}); choose a writable --out") from None
    free = shutil.disk_usage(d).free / 2**20
    if free < min_free_mb:
        raise OSError(f"only {free:.0f} MB free in {d}; free some disk space or choose another --out")
    return d


def build(
    pipe, concepts="default", prompts="default", *, num_inference_steps: int = 50, guidance_scale: float = 7.5,
    batch_size: int = 1, seed: int = 22, variant: str = "reference", start_token: bool = True,
    height: int | None = None, width: int | None = None, scheduler: str | None = None,
    negative_prompt: str | None = None, device=None, dtype=None, out: str | Path | None = None,
    checkpoint_every: int = 0, resume: bool = False, progress: bool = False,
    callback: Callable[[HRVBuilder, BuildProgress], None] | None = None,
) -> HRV:
    """Build Head Relevance Vectors for ``concepts`` by generating ``prompts`` with ``pipe``.

    concepts: ConceptSet, dict, concept file or ``"default"``; prompts: list, prompt file or
    ``"default"``. ``variant="reference"`` draws one word per concept per layer call (the paper);
    ``"all-words"`` scores every word deterministically. With ``out``, the HRV is saved there and
    counts are checkpointed every ``checkpoint_every`` prompts; ``resume=True`` continues a killed run.
    """
    if device is not None or dtype is not None:
        pipe = pipe.to(device=device, dtype=dtype)
    settings = BuildSettings(num_inference_steps, guidance_scale, batch_size, seed, variant, start_token,
                             height, width, scheduler, negative_prompt)
    builder = HRVBuilder(pipe, concepts, prompts, settings)
    if out is not None:
        check_output_dir(out)
        if resume:
            builder.load_checkpoint(out)
        elif (Path(out) / CHECKPOINT_META).exists():
            raise FileExistsError(f"{out} holds a checkpoint of an earlier run; pass resume=True (--resume) or use another folder")
    every_batches = max(1, -(-checkpoint_every // batch_size)) if checkpoint_every else 0

    def on_batch(b: HRVBuilder, info: BuildProgress) -> None:
        if out is not None and every_batches and len(b.batches_done) % every_batches == 0:
            b.save_checkpoint(out)
        if callback is not None:
            callback(b, info)

    builder.run(on_batch=on_batch, progress=progress)
    hrv = builder.result()
    if out is not None:
        hrv.save(out)
        builder.save_checkpoint(out)
    return hrv


def env_flag(name: str) -> bool:
    """True if an environment variable is set to a truthy value."""
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
