"""HRVs on the Hugging Face Hub: ``HRV.load("hf://OWNER/REPO")`` and ``hrv.push_to_hub("OWNER/REPO")``.

A Hub repo holds the same files as an HRV folder (``hrv.safetensors`` + ``hrv.json``) plus a
generated model card (``README.md``: model, head layout, concepts, prompts, steps, headlens
version) and ``heatmap.png``. Downloads go through ``huggingface_hub``'s cache, so
``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` work as for any model.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from . import __version__

PREFIX = "hf://"
CARD_FILE = "README.md"
HEATMAP_FILE = "heatmap.png"
_SPEC = re.compile(r"^hf:/+(?P<repo>[\w.-]+/[\w.-]+)(?P<sub>(/[\w.-]+)*)(@(?P<rev>[\w./-]+))?/?$")


def parse(spec: str) -> tuple[str, str | None, str | None]:
    """``hf://OWNER/REPO[/SUBFOLDER][@REVISION]`` → (repo id, subfolder, revision)."""
    m = _SPEC.match(str(spec).strip())
    if not m:
        raise ValueError(f"bad Hub HRV {spec!r}: use hf://OWNER/REPO, hf://OWNER/REPO/SUBFOLDER or hf://OWNER/REPO@REVISION")
    return m.group("repo"), (m.group("sub").strip("/") or None), m.group("rev")


def check_repo_id(repo_id: str) -> str:
    """``OWNER/NAME`` or a one-line error."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", str(repo_id).strip()):
        raise ValueError(f"bad Hub repo id {repo_id!r}: use OWNER/NAME, e.g. alice/sd15-hrv")
    return str(repo_id).strip()


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return env or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _cache_dir() -> str | None:
    """The Hub cache as the environment names it now (``HF_HUB_CACHE``), else huggingface_hub's default."""
    return os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or None


def download(spec: str) -> Path:
    """Fetch (or find in the Hub cache) the HRV files of ``hf://OWNER/REPO``; returns their local folder."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    from .hrv import META_FILE, TENSORS_FILE

    repo, sub, rev = parse(spec)
    offline = _offline()
    paths = []
    for name in (META_FILE, TENSORS_FILE):
        try:
            paths.append(hf_hub_download(repo, name, subfolder=sub, revision=rev, cache_dir=_cache_dir(),
                                         local_files_only=offline, library_name="headlens",
                                         library_version=__version__))
        except LocalEntryNotFoundError:
            where = "offline (HF_HUB_OFFLINE is set) and " if offline else ""
            raise FileNotFoundError(
                f"{spec}: {where}{name} is not in the Hub cache ({_cache_dir() or 'default cache'}); "
                "download it once online, or check the repo id") from None
        except (HfHubHTTPError, HFValidationError, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FileNotFoundError(f"cannot get {name} of {spec} ({first}); check the repo id and your access") from None
    return Path(paths[0]).parent


# ---------------------------------------------------------------------------------------------- model card
def _fmt(v) -> str:
    return "—" if v is None or v == "" else str(v)


def model_card(hrv, repo_id: str | None = None) -> str:
    """The model card (``README.md``) of an HRV: YAML metadata, what it is, settings, concepts, usage."""
    md = hrv.metadata
    model = str(md.get("model") or "unknown model")
    hub_model = bool(re.fullmatch(r"[\w.-]+/[\w.-]+", model)) and not Path(model).exists()
    front = ["---", "library_name: headlens", "tags:", "- headlens", "- head-relevance-vectors",
             "- text-to-image", "- interpretability"]
    if hub_model:
        front.append(f"base_model: {model}")
    if md.get("license"):
        front.append(f"license: {str(md['license']).lower()}")
    front.append("---")
    name = f"hf://{repo_id}" if repo_id else "this folder"
    prompts = md.get("num_prompts")
    if md.get("prompts_fingerprint"):
        prompts = f"{_fmt(prompts)} (fingerprint {md['prompts_fingerprint']})"
    rows = [
        ("model", model), ("head layout", f"{len(hrv.heads)} heads in {len(hrv.heads.layers)} cross-attention layers "
                                          f"(fingerprint {hrv.heads.fingerprint})"),
        ("concepts", len(hrv.concepts)), ("prompts", _fmt(prompts)),
        ("steps", _fmt(md.get("num_inference_steps"))), ("UNet evaluations", _fmt(md.get("unet_evaluations"))),
        ("guidance scale", _fmt(md.get("guidance_scale"))), ("scheduler", _fmt(md.get("scheduler"))),
        ("seed", _fmt(md.get("seed"))), ("variant", _fmt(md.get("variant"))),
        ("votes", "yes (per-timestep HRVs available)" if hrv.votes is not None else
         "no (matrix and per-timestep HRVs)" if hrv._per_timestep is not None else "no (matrix only)"),
        ("built with headlens", _fmt(md.get("headlens_version"))), ("card written by headlens", __version__),
    ]
    if md.get("source"):
        rows.insert(1, ("source", md["source"]))
    lines = front + [
        "", f"# Head Relevance Vectors for {model}", "",
        f"Head Relevance Vectors (HRVs) of {len(hrv.concepts)} visual concepts over the {len(hrv.heads)} "
        "cross-attention heads of the model: for each concept a vector of mean 1 saying how much each head "
        "attends to it (Park et al., ICLR 2025). Made with headlens.", "",
        "```python", "import headlens", f'hrv = headlens.HRV.load("{name if repo_id else "FOLDER"}", pipe)  '
        "# pipe: a diffusers pipeline of the model; its head layout is checked",
        'hrv.top_heads("' + hrv.concepts[0] + '", k=10)', "```", "",
        "```bash", f"headlens show {name if repo_id else 'FOLDER'} --out plots", "```", "",
        "## How it was built", "", "| | |", "|---|---|",
    ] + [f"| {k} | {v} |" for k, v in rows] + [
        "", "## Concepts", "", "| concept | words | top 3 heads (HRV) |", "|---|---|---|",
    ]
    for c in hrv.concepts:
        words = ", ".join(hrv.words.get(c, [])[:10]) or "—"
        top = ", ".join(f"{n} ({v:.2f})" for n, v in hrv.top_heads(c, 3, names="short"))
        lines.append(f"| {c} | {words} | {top} |")
    lines += ["", f"![HRV heatmap: concepts × heads]({HEATMAP_FILE})", "",
              "Head names: place, cross-attention layer inside the place, head (`up2.h0` = up, layer: 2, head: 0).",
              "", "## Files", "",
              "- `hrv.safetensors`: `matrix` float32 [concepts, heads]" +
              (", `votes` int64 [timesteps, heads, concepts]" if hrv.votes is not None else
               ", `per_timestep` float32 [timesteps, concepts, heads]" if hrv._per_timestep is not None else ""),
              "- `hrv.json`: concepts and words, head layout, run settings (format headlens-hrv/1)",
              f"- `{HEATMAP_FILE}`: the HRVs as a heatmap"]
    if md.get("citation"):
        lines += ["", "## Source", "", f"{md['citation']}. Data: {md.get('release', '')}; licence "
                  f"{md.get('license', 'see source')}."]
    return "\n".join(lines) + "\n"


def write_folder(hrv, folder: str | Path, repo_id: str | None = None) -> Path:
    """Write what :func:`push_to_hub` uploads: the HRV files, ``README.md`` (model card) and ``heatmap.png``."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    from . import plots

    d = hrv.save(folder)
    (d / CARD_FILE).write_text(model_card(hrv, repo_id), encoding="utf-8")
    plots.save_figure(plots.plot_heatmap(hrv), d / HEATMAP_FILE)
    return d


def push_to_hub(hrv, repo_id: str, *, token: str | None = None, private: bool = False,
                commit_message: str | None = None, revision: str | None = None):
    """Create ``repo_id`` (a model repo) if needed and upload the HRV folder with its model card."""
    from huggingface_hub import HfApi

    repo_id = check_repo_id(repo_id)
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="headlens-hub-") as tmp:
        folder = write_folder(hrv, Path(tmp) / "hrv", repo_id)
        return api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision,
                                 commit_message=commit_message or f"HRV of {hrv.metadata.get('model', 'a model')} "
                                                                  f"({len(hrv.concepts)} concepts, headlens {__version__})")
