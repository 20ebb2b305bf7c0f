"""HRVs on the Hugging Face Hub: `hf://` loading from a real huggingface_hub cache (offline), the upload folder.

The cache is laid out as huggingface_hub writes it (models--OWNER--REPO/blobs, snapshots/<commit>/ with
symlinks, refs/main); huggingface_hub's own scan_cache_dir and snapshot_download recognise it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_inprocess import cli
from PIL import Image

from headlens import HRV, HeadIndex, hub
from headlens.testing import tiny_unet

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hrv():
    heads = HeadIndex.from_unet(tiny_unet())
    g = torch.Generator().manual_seed(0)
    votes = torch.randint(0, 5, (3, len(heads), 3), generator=g)
    meta = {"model": "someone/tiny-sd", "num_prompts": 12, "prompts_fingerprint": "abc123", "num_inference_steps": 3,
            "unet_evaluations": 3, "guidance_scale": 7.5, "scheduler": "DDIMScheduler", "seed": 22,
            "variant": "reference", "headlens_version": "0.1.0"}
    return HRV(heads, ["Color", "Plants", "Shape"], votes,
               {"Color": ["red", "blue"], "Plants": ["lavender", "rose"], "Shape": ["square"]}, meta)


def add_to_cache(cache: Path, repo_id: str, folder: Path, commit: str = COMMIT, subfolder: str = "") -> Path:
    """Put a folder's files into a huggingface_hub cache the way hf_hub_download stores them."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit / subfolder
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    for f in sorted(folder.iterdir()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / f.name
        link.symlink_to(os.path.relpath(blob, snap))
    (repo / "refs" / "main").write_text(commit)
    return repo


@pytest.fixture
def cache(tmp_path, monkeypatch, hrv):
    c = tmp_path / "hub-cache"
    hrv.save(tmp_path / "src")
    add_to_cache(c, "alice/tiny-hrv", tmp_path / "src")
    monkeypatch.setenv("HF_HUB_CACHE", str(c))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return c


def test_cache_is_a_real_huggingface_hub_cache(cache):
    from huggingface_hub import scan_cache_dir, snapshot_download

    info = scan_cache_dir(cache)
    repos = {r.repo_id: r for r in info.repos}
    assert set(repos) == {"alice/tiny-hrv"} and not info.warnings
    (rev,) = repos["alice/tiny-hrv"].revisions
    assert rev.commit_hash == COMMIT and rev.refs == frozenset({"main"})
    assert {f.file_name for f in rev.files} == {"hrv.json", "hrv.safetensors"}
    snap = snapshot_download("alice/tiny-hrv", cache_dir=cache, local_files_only=True)
    assert Path(snap) == cache / "models--alice--tiny-hrv" / "snapshots" / COMMIT


def test_load_hf_offline_from_the_cache(cache, hrv):
    got = HRV.load("hf://alice/tiny-hrv")
    assert torch.equal(got.votes, hrv.votes) and got.concepts == hrv.concepts and got.heads == hrv.heads
    assert torch.equal(HRV.load(f"hf://alice/tiny-hrv@{COMMIT}").matrix, hrv.matrix)
    assert HRV.load("hf:/alice/tiny-hrv").words == hrv.words  # the form a pathlib.Path makes of hf://
    HRV.load("hf://alice/tiny-hrv", model=tiny_unet())  # layout check passes


def test_load_hf_subfolder_and_layout_check(tmp_path, monkeypatch, hrv, sdxl_pipe):
    c = tmp_path / "cache2"
    hrv.save(tmp_path / "src")
    add_to_cache(c, "bob/many-hrvs", tmp_path / "src", subfolder="sd-tiny")
    monkeypatch.setenv("HF_HUB_CACHE", str(c))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert torch.equal(HRV.load("hf://bob/many-hrvs/sd-tiny").votes, hrv.votes)
    with pytest.raises(ValueError, match="built for a model with 22 heads"):
        HRV.load("hf://bob/many-hrvs/sd-tiny", model=sdxl_pipe)


def test_missing_repo_offline_is_one_clear_line(cache):
    with pytest.raises(FileNotFoundError) as e:
        HRV.load("hf://alice/other-hrv")
    msg = str(e.value)
    assert "\n" not in msg and "offline (HF_HUB_OFFLINE is set)" in msg and str(cache) in msg
    with pytest.raises(ValueError, match="bad Hub HRV 'hf://just-a-name'"):
        HRV.load("hf://just-a-name")


def test_hf_hub_cache_is_read_when_loading(tmp_path, monkeypatch, hrv):
    """HF_HUB_CACHE set after import still decides where the files come from."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError):
        HRV.load("hf://alice/tiny-hrv")
    hrv.save(tmp_path / "src")
    add_to_cache(tmp_path / "empty", "alice/tiny-hrv", tmp_path / "src")
    assert torch.equal(HRV.load("hf://alice/tiny-hrv").votes, hrv.votes)


def test_cli_takes_hf_hrvs(cache, monkeypatch, capsys, tmp_path):
    code, out, err = cli(monkeypatch, capsys, "show", "hf://alice/tiny-hrv", "--out", tmp_path / "pics", "--k", "2")
    assert code == 0, err
    assert (tmp_path / "pics" / "heatmap.png").is_file()
    code, out, err = cli(monkeypatch, capsys, "generate", "a red square", "--adjust", "red:Color:Shape", "--seeds", "1",
                         "--hrv", "hf://alice/tiny-hrv", "--model", "tiny", "--steps", "1", "--out", tmp_path / "gen")
    assert code == 0, err
    assert json.loads((tmp_path / "gen" / "run.json").read_text())["hrv"].startswith("hf:")


# ---------------------------------------------------------------------------------------------- upload folder
def test_upload_folder_files_and_model_card(hrv, tmp_path):
    from huggingface_hub import ModelCard

    d = hub.write_folder(hrv, tmp_path / "up", repo_id="alice/tiny-hrv")
    assert sorted(p.name for p in d.iterdir()) == ["README.md", "heatmap.png", "hrv.json", "hrv.safetensors"]
    back = HRV.load(d)
    assert torch.equal(back.votes, hrv.votes) and back.metadata == hrv.metadata
    card = ModelCard.load(d / "README.md")  # huggingface_hub parses the card and its YAML metadata
    assert card.data.library_name == "headlens" and card.data.base_model == "someone/tiny-sd"
    assert "headlens" in card.data.tags
    text = card.text
    for needle in ("someone/tiny-sd", "22 heads in 7 cross-attention layers", "| prompts | 12 (fingerprint abc123) |",
                   "| steps | 3 |", "| guidance scale | 7.5 |", "| scheduler | DDIMScheduler |",
                   "| built with headlens | 0.1.0 |", 'HRV.load("hf://alice/tiny-hrv", pipe)', "(heatmap.png)"):
        assert needle in text, needle
    for c in hrv.concepts:
        top = hrv.top_heads(c, 3, names="short")
        assert f"| {c} | {', '.join(hrv.words[c])} | {', '.join(f'{n} ({v:.2f})' for n, v in top)} |" in text
    img = Image.open(d / "heatmap.png")
    assert img.format == "PNG" and img.width > 400 and np.asarray(img.convert("L")).std() > 5


def test_paper_hrv_card_carries_licence_and_source(tmp_path):
    from huggingface_hub import ModelCard

    d = hub.write_folder(HRV.load("paper:sd-v1-4"), tmp_path / "paper", repo_id="alice/sd14-paper-hrv")
    card = ModelCard.load(d / "README.md")
    assert card.data.license == "apache-2.0" and card.data.base_model == "CompVis/stable-diffusion-v1-4"
    assert "SNU-DRL/HRV" in card.text and "| source | paper:sd-v1-4 |" in card.text and "| steps | 50 |" in card.text
    assert torch.equal(HRV.load(d).per_timestep, HRV.load("paper:sd-v1-4").per_timestep)


def test_push_to_hub_uploads_that_folder(hrv, monkeypatch, tmp_path):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw))

        def upload_folder(self, *, repo_id, folder_path, **kw):
            shutil.copytree(folder_path, tmp_path / "uploaded")
            calls.append(("upload_folder", repo_id, kw))
            return "https://huggingface.co/alice/tiny-hrv/commit/x"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = hrv.push_to_hub("alice/tiny-hrv", token="tok", private=True)
    assert url.endswith("/commit/x")
    assert calls[0] == ("init", "tok")
    assert calls[1] == ("create_repo", "alice/tiny-hrv", {"repo_type": "model", "private": True, "exist_ok": True})
    assert calls[2][0] == "upload_folder" and calls[2][1] == "alice/tiny-hrv" and calls[2][2]["repo_type"] == "model"
    up = tmp_path / "uploaded"
    assert sorted(p.name for p in up.iterdir()) == ["README.md", "heatmap.png", "hrv.json", "hrv.safetensors"]
    assert (up / "README.md").read_text() == hub.model_card(hrv, "alice/tiny-hrv")
    with pytest.raises(ValueError, match="bad Hub repo id 'not a repo id': use OWNER/NAME"):
        hrv.push_to_hub("not a repo id")


def test_cli_push_folder_only(hrv, monkeypatch, capsys, tmp_path):
    import huggingface_hub

    def no_api(*a, **k):
        raise AssertionError("--folder must not touch the Hub")

    monkeypatch.setattr(huggingface_hub, "HfApi", no_api)
    hrv.save(tmp_path / "hrv")
    code, out, err = cli(monkeypatch, capsys, "push", tmp_path / "hrv", "alice/tiny-hrv", "--folder", tmp_path / "up")
    assert code == 0, err
    assert out.strip() == str(tmp_path / "up")
    assert (tmp_path / "up" / "README.md").read_text() == hub.model_card(HRV.load(tmp_path / "hrv"), "alice/tiny-hrv")
    code, out, err = cli(monkeypatch, capsys, "push", tmp_path / "hrv", "no-owner", "--folder", tmp_path / "up2")
    assert code == 2 and "error: bad Hub repo id 'no-owner'" in err
