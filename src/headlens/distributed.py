"""Scale-out of HRV construction: process groups (torchrun / accelerate), shards, and merging runs.

* :func:`setup` detects ``torchrun`` / ``accelerate launch`` from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``
  and opens the process group (gloo on CPU, nccl on CUDA with device ``cuda:LOCAL_RANK``).
  :class:`Comm` is the little that :func:`headlens.building.build` needs from it: sums of count
  tensors, and "rank 0 decides, everyone learns" for checks and checkpoint loading.
* :func:`shard_batches` picks the batches of one ``--shard i/N`` part of a run.
* :func:`merge_runs` adds the counts of separate runs (HRV folders and/or checkpoints) exactly,
  refusing runs of another model, concept set, prompt set or settings, and runs that did the same
  batches twice.

Counts are integers and every batch is done by exactly one process, so a sharded or merged build
gives exactly the counts of a one-process build with the same batch size.
"""

from __future__ import annotations

import builtins
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = [
    "Comm",
    "MergeError",
    "RunCounts",
    "env_world",
    "merge_runs",
    "parse_shard",
    "read_run",
    "setup",
    "shard_batches",
]


# ---------------------------------------------------------------------------------------------- process groups
def env_world() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun/accelerate environment variables; None if not launched so."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return None
    if world <= 1:
        return None
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


@dataclass
class Comm:
    """One process of a (possibly one-process) group; collectives are no-ops when alone."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False  # this Comm opened the process group (and closes it)

    @property
    def is_root(self) -> bool:
        """True on rank 0 (the process that writes files)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    def device_for(self, device: str | torch.device | None) -> str | None:
        """The device this process should use: ``cuda`` becomes ``cuda:LOCAL_RANK`` when distributed."""
        if device is None:
            return None
        d = str(device)
        if self.distributed and d.startswith("cuda"):
            return f"cuda:{self.local_rank}"
        return d

    def _comm_device(self) -> torch.device:
        return torch.device(f"cuda:{self.local_rank}") if self.backend == "nccl" else torch.device("cpu")

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over processes (a new CPU tensor; shapes may differ in the first dimension)."""
        if not self.distributed:
            return t.detach().to("cpu").clone()
        import torch.distributed as dist

        dev = self._comm_device()
        n = torch.tensor([t.shape[0]], dtype=torch.int64, device=dev)
        dist.all_reduce(n, op=dist.ReduceOp.MAX)
        rows = int(n.item())
        out = torch.zeros((rows, *t.shape[1:]), dtype=t.dtype)
        out[: t.shape[0]] = t.detach().to("cpu")
        wide = torch.float64 if t.dtype.is_floating_point else torch.int64  # exact sums, supported by gloo and nccl
        # chunk the first dimension so a large per-prompt store is never widened whole
        step = max(1, (1 << 24) // max(1, out[0].numel()))
        for i in range(0, rows, step):
            part = out[i : i + step].to(device=dev, dtype=wide)
            dist.all_reduce(part, op=dist.ReduceOp.SUM)
            out[i : i + step] = part.to("cpu", t.dtype)
        return out

    def on_root(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` on rank 0 and hand its result (or its error, re-raised) to every process."""
        if not self.distributed:
            return fn()
        import torch.distributed as dist

        box: list = [None]
        error: BaseException | None = None
        if self.is_root:
            try:
                box[0] = ("ok", fn())
            except Exception as e:  # noqa: BLE001 - sent to the other ranks, re-raised everywhere
                error = e
                box[0] = ("error", type(e).__name__, str(e))
        dist.broadcast_object_list(box, src=0)
        if error is not None:
            raise error
        if box[0][0] == "error":
            raise _rebuild_error(box[0][1], box[0][2])
        return box[0][1]

    def barrier(self) -> None:
        """Wait for every process."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """Close the process group if this Comm opened it."""
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False


def _rebuild_error(name: str, message: str) -> Exception:
    from .building import CheckpointMismatchError, DiskSpaceError

    known = {"CheckpointMismatchError": CheckpointMismatchError, "MergeError": MergeError, "DiskSpaceError": DiskSpaceError}
    cls = known.get(name) or getattr(builtins, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls = RuntimeError
    try:
        return cls(message)
    except Exception:  # noqa: BLE001 - an exception class with another constructor
        return RuntimeError(f"{name}: {message}")


def setup(device: str | torch.device | None = "cpu", enabled: bool | None = None) -> Comm:
    """A :class:`Comm` for this process: joins an open process group, or opens one under torchrun/accelerate.

    ``enabled=False`` forces a one-process Comm; ``None`` detects (``WORLD_SIZE`` > 1 or an open group).
    The backend is nccl for CUDA devices, gloo otherwise (``ACCELERATE_USE_CPU=true`` forces gloo).
    """
    if enabled is False:
        return Comm()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return Comm(dist.get_rank(), dist.get_world_size(), local, dist.get_backend(), owns_group=False)
    env = env_world()
    if env is None:
        if enabled:
            raise RuntimeError("distributed build requested but WORLD_SIZE is not > 1; launch with torchrun or accelerate")
        return Comm()
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; run without torchrun")
    rank, world, local = env
    use_cuda = str(device or "cpu").startswith("cuda") and torch.cuda.is_available() and \
        os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true", "yes")
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local)
    kwargs = {"device_id": torch.device(f"cuda:{local}")} if use_cuda else {}
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world, **kwargs)
    return Comm(rank, world, local, backend, owns_group=True)


# ---------------------------------------------------------------------------------------------- shards
def parse_shard(spec: str | Sequence[int] | None) -> tuple[int, int] | None:
    """``"i/N"`` (or ``(i, N)``) → ``(i, N)`` with 0 ≤ i < N; None stays None."""
    if spec is None:
        return None
    if isinstance(spec, str):
        try:
            a, b = spec.split("/")
            i, n = int(a), int(b)
        except ValueError:
            raise ValueError(f"bad shard {spec!r}: use i/N with 0 ≤ i < N, e.g. 0/4") from None
    else:
        i, n = (int(x) for x in spec)
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"bad shard {i}/{n}: use i/N with 0 ≤ i < N, e.g. 0/4")
    return i, n


def shard_batches(num_batches: int, shard: str | Sequence[int] | None = None) -> list[int]:
    """Batches of one shard: batch b belongs to shard b % N (all batches without a shard)."""
    s = parse_shard(shard)
    if s is None:
        return list(range(num_batches))
    i, n = s
    out = list(range(i, num_batches, n))
    if not out:
        raise ValueError(f"shard {i}/{n} has no batches: the run has only {num_batches}; use fewer shards")
    return out


# ---------------------------------------------------------------------------------------------- merging runs
class MergeError(ValueError):
    """Runs that cannot be added up (other model, concepts, prompts or settings; overlapping batches)."""


@dataclass
class RunCounts:
    """The counts of one (partial) run, read from an HRV folder or a checkpoint."""

    source: str
    fingerprint: dict | None
    votes: torch.Tensor  # [T, H, C] int64
    batches: set[int] | None  # None: not recorded (older files)
    metadata: dict
    concepts: dict[str, list[str]]
    heads: list[dict]
    prompt_votes: torch.Tensor | None = None  # [P, H, C]
    prompt_done: torch.Tensor | None = None  # [P] bool
    extra: dict = field(default_factory=dict)


def read_run(folder: str | Path) -> RunCounts:
    """The counts in an HRV folder or a checkpoint folder (the one with more batches if both are there)."""
    from .building import (
        CHECKPOINT_FILE,
        CHECKPOINT_META,
        PROMPT_VOTES_FILE,
        ranges_to_batches,
        read_checkpoint,
    )
    from .hrv import META_FILE, TENSORS_FILE

    d = Path(folder)
    if not d.is_dir():
        raise FileNotFoundError(f"{d} is not a folder; give HRV folders or build --out folders to merge")
    candidates: list[tuple[RunCounts, bool]] = []  # (run, is the HRV)
    if (d / META_FILE).is_file() and (d / TENSORS_FILE).is_file():
        from safetensors.torch import load_file

        meta = json.loads((d / META_FILE).read_text(encoding="utf-8"))
        tensors = load_file(str(d / TENSORS_FILE))
        if "votes" not in tensors:
            raise MergeError(f"{d} holds an HRV without vote counts (imported from a matrix); it cannot be merged")
        md = meta.get("metadata", {})
        batches = ranges_to_batches(md["batches_done"]) if "batches_done" in md else None
        run = RunCounts(str(d), md.get("build_fingerprint"), tensors["votes"].to(torch.int64), batches, md,
                        {c["name"]: list(c.get("words", [])) for c in meta["concepts"]}, meta["heads"]["layers"])
        if (d / PROMPT_VOTES_FILE).is_file():
            run.prompt_votes, run.prompt_done, _ = read_prompt_votes(d)
        candidates.append((run, True))
    if (d / CHECKPOINT_FILE).is_file() or (d / CHECKPOINT_META).is_file():
        meta, tensors = read_checkpoint(d)
        if "metadata" not in meta or "heads" not in meta:
            if not candidates:
                raise MergeError(f"checkpoint in {d} predates mergeable checkpoints (no description); finish it with --resume")
        else:
            pv = tensors.get("prompt_votes")
            run = RunCounts(str(d), meta.get("fingerprint"), tensors["votes"].to(torch.int64),
                            {int(b) for b in meta.get("batches_done", [])}, meta["metadata"], meta["concepts"],
                            meta["heads"], pv, None, dict(meta.get("extra") or {}))
            if pv is not None:
                run.prompt_done = _done_mask(run)
            candidates.append((run, False))
    if not candidates:
        raise FileNotFoundError(f"{d} holds neither an HRV (hrv.json) nor a checkpoint; nothing to merge")
    # the newer of the two (a killed resume leaves a checkpoint ahead of an older HRV); the HRV on a tie
    return max(candidates, key=lambda c: (len(c[0].batches) if c[0].batches is not None else -1, c[1]))[0]


def read_prompt_votes(folder: str | Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(prompt_votes [P, H, C] int16, done [P] bool, metadata) of a folder's per-prompt store."""
    from safetensors import safe_open

    from .building import PROMPT_VOTES_FILE

    p = Path(folder) / PROMPT_VOTES_FILE
    if not p.is_file():
        raise FileNotFoundError(
            f"{Path(folder)} has no per-prompt votes ({PROMPT_VOTES_FILE}); build with --per-prompt to keep them"
        )
    with safe_open(str(p), framework="pt") as f:
        meta = dict(f.metadata() or {})
        votes = f.get_tensor("prompt_votes").to(torch.int16)
        done = f.get_tensor("done").to(torch.bool)
    for k in ("fingerprint", "concepts"):
        if k in meta:
            meta[k] = json.loads(meta[k])
    return votes, done, meta


def _done_mask(run: RunCounts) -> torch.Tensor:
    fp = run.fingerprint or {}
    p = int(fp.get("num_prompts", run.metadata.get("num_prompts", 0)))
    bs = int((fp.get("settings") or {}).get("batch_size", run.metadata.get("batch_size", 1)))
    done = torch.zeros(p, dtype=torch.bool)
    for b in run.batches or ():
        done[b * bs : min((b + 1) * bs, p)] = True
    return done


def _describe_batches(batches: set[int], bs: int) -> str:
    from .building import batch_ranges

    parts = []
    for lo, hi in batch_ranges(batches)[:4]:
        parts.append(f"{lo}" if hi == lo + 1 else f"{lo}-{hi - 1}")
    more = "" if len(batch_ranges(batches)) <= 4 else ", …"
    return f"batches {', '.join(parts)}{more} (batch size {bs})"


def merge_runs(folders: Sequence[str | Path], out: str | Path | None = None, *, allow_unknown: bool = False):
    """Add the counts of separate runs exactly; returns ``(HRV, RunCounts of the sum)``.

    Refuses (:class:`MergeError`, one line) runs of another model, head layout, concept set, prompt
    set or settings, and runs whose batches overlap. Runs that did not record their batches (older
    files) are refused unless ``allow_unknown``. With ``out``, writes an HRV folder and a checkpoint
    there (so ``headlens build --resume --out OUT`` can finish missing batches), plus the per-prompt
    store when every run has one.
    """
    from .building import batch_ranges, write_checkpoint, write_prompt_votes
    from .heads import HeadIndex
    from .hrv import HRV

    if len(folders) < 2:
        raise MergeError("give at least two runs to merge")
    if out is not None:
        from .building import CHECKPOINT_FILE, CHECKPOINT_META
        from .hrv import META_FILE

        taken = [n for n in (META_FILE, CHECKPOINT_FILE, CHECKPOINT_META) if (Path(out) / n).exists()]
        if taken:
            raise MergeError(f"{out} already holds {', '.join(taken)}; merge into a new folder (nothing is overwritten)")
    runs = [read_run(f) for f in folders]
    first = runs[0]
    for r in runs:
        if r.fingerprint is None and not allow_unknown:
            raise MergeError(
                f"{r.source} does not record its model, settings and batches (older file); pass --force to merge it anyway"
            )
    for r in runs[1:]:
        _check_same(first, r)
    # overlaps
    seen: dict[int, str] = {}
    bs = int(((first.fingerprint or {}).get("settings") or {}).get("batch_size", first.metadata.get("batch_size", 1)))
    for r in runs:
        if r.batches is None:
            if not allow_unknown:
                raise MergeError(f"{r.source} does not record which batches it did; pass --force to merge it anyway")
            continue
        clash = {b for b in r.batches if b in seen}
        if clash:
            other = seen[min(clash)]
            raise MergeError(
                f"{r.source} and {other} both did {_describe_batches(clash, bs)}: merging would count those prompts twice"
            )
        seen.update({b: r.source for b in r.batches})
    t = max(r.votes.shape[0] for r in runs)
    votes = torch.zeros((t, *first.votes.shape[1:]), dtype=torch.int64)
    for r in runs:
        votes[: r.votes.shape[0]] += r.votes
    batches = set(seen) if all(r.batches is not None for r in runs) else None
    pv = None
    if all(r.prompt_votes is not None for r in runs):
        pv = torch.zeros_like(first.prompt_votes, dtype=torch.int32)
        for r in runs:
            pv += r.prompt_votes.to(torch.int32)
        pv = pv.to(torch.int16)
    md = dict(first.metadata)
    num_prompts = int(md.get("num_prompts", 0))
    if batches is not None:
        md["batches_done"] = batch_ranges(batches)
        md["prompts_done"] = sum(max(0, min(bs, num_prompts - b * bs)) for b in batches)
    else:
        md.pop("batches_done", None)
        md["prompts_done"] = sum(int(r.metadata.get("prompts_done", 0)) for r in runs)
    md["unet_evaluations"] = t
    md["per_prompt"] = pv is not None
    md["merged_from"] = [r.source for r in runs]
    heads = HeadIndex.from_description(first.heads)
    hrv = HRV(heads, list(first.concepts), votes, first.concepts, md)
    merged = RunCounts("merged", first.fingerprint, votes, batches, md, first.concepts, first.heads, pv,
                       None)
    if pv is not None:
        merged.prompt_done = _done_mask(merged) if batches is not None else None
    if out is not None:
        o = Path(out)
        if batches is not None and first.fingerprint is not None:
            record = {"fingerprint": first.fingerprint, "metadata": md, "concepts": first.concepts, "heads": first.heads}
            write_checkpoint(o, votes, batches, record, pv)
        hrv.save(o)
        if pv is not None and merged.prompt_done is not None:
            write_prompt_votes(o, pv, merged.prompt_done, first.fingerprint or {}, list(first.concepts), t)
    return hrv, merged


def _check_same(a: RunCounts, b: RunCounts) -> None:
    """Refuse runs that differ in anything that shapes the counts."""
    if a.fingerprint is not None and b.fingerprint is not None:
        keys = sorted(k for k in set(a.fingerprint) | set(b.fingerprint) if a.fingerprint.get(k) != b.fingerprint.get(k))
        if keys:
            detail = ""
            if "settings" in keys:
                sa, sb = a.fingerprint.get("settings") or {}, b.fingerprint.get("settings") or {}
                detail = ": " + ", ".join(f"{k} {sa.get(k)!r} vs {sb.get(k)!r}" for k in sorted(set(sa) | set(sb))
                                          if sa.get(k) != sb.get(k))
            raise MergeError(f"cannot merge {a.source} and {b.source}: they differ in {', '.join(keys)}{detail}")
        return
    for key in ("model", "head_layout", "prompts_fingerprint", "num_prompts", "num_inference_steps", "guidance_scale",
                "seed", "batch_size", "variant", "start_token", "scheduler", "height", "width", "negative_prompt"):
        if a.metadata.get(key) != b.metadata.get(key):
            raise MergeError(f"cannot merge {a.source} and {b.source}: they differ in {key} "
                             f"({a.metadata.get(key)!r} vs {b.metadata.get(key)!r})")
    if a.concepts != b.concepts:
        raise MergeError(f"cannot merge {a.source} and {b.source}: their concept sets differ")
    if a.votes.shape[1:] != b.votes.shape[1:]:
        raise MergeError(f"cannot merge {a.source} and {b.source}: vote shapes {tuple(a.votes.shape)} and "
                         f"{tuple(b.votes.shape)} differ")
