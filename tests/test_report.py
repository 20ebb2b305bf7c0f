"""`headlens report`: one self-contained HTML page with every picture embedded and nothing external."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from cli_inprocess import cli_code as cli
from PIL import Image

from headlens import HRV
from headlens.heads import HeadIndex
from headlens.report import build_report, markdown_to_html

CONCEPTS = ["Color", "Animals", "Plants"]


class Page(HTMLParser):
    """Collects image sources, link targets, element ids and section titles."""

    def __init__(self):
        super().__init__()
        self.srcs, self.hrefs, self.ids, self.tags, self.h2 = [], [], set(), [], []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "src" in a:
            self.srcs.append(a["src"])
        if "href" in a:
            self.hrefs.append(a["href"])
        if "id" in a:
            self.ids.add(a["id"])
        self._in_h2 = tag == "h2"

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        if self._in_h2:
            self.h2.append(data)


def parse(path) -> Page:
    p = Page()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def write_png(path, seed=0, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def heads(sd_pipe):
    return HeadIndex.from_unet(sd_pipe.unet)


@pytest.fixture()
def hrv_dir(tmp_path, heads):
    g = torch.Generator().manual_seed(0)
    votes = torch.zeros(3, len(heads), len(CONCEPTS), dtype=torch.int64)
    for t in range(3):
        votes[t, torch.arange(len(heads)), torch.randint(0, 3, (len(heads),), generator=g)] += 2
    hrv = HRV(heads, CONCEPTS, votes, {"Color": ["red", "blue"]},
              {"model": "tiny-sd", "num_inference_steps": 3, "seed": 22, "guidance_scale": 7.5})
    d = hrv.save(tmp_path / "hrv")
    # analysis outputs other commands write inside the HRV folder
    write_png(d / "weakening" / "color.png", 1)
    (d / "weakening" / "color.csv").write_text("k,morhf,lerhf\n0,0.235,0.235\n11,0.15,0.23\n")
    write_png(d / "polysemy" / "grid.png", 2)
    write_png(d / "edits" / "run1" / "grid.png", 3)
    (d / "validation.json").write_text('{"spearman": 0.71, "passed": true}')
    (d / "notes.md").write_text("# Notes\nSee [the paper](https://arxiv.org/abs/2412.02237). <script>x</script>\n\n"
                                "| head | value |\n|---|---|\n| down1.h3 | 4.2 |\n")
    return d


def embedded_pngs(page: Page) -> list[bytes]:
    out = []
    for s in page.srcs:
        assert s.startswith("data:image/png;base64,"), s[:60]
        out.append(base64.b64decode(s.split(",", 1)[1], validate=True))
    return out


def test_report_is_self_contained_and_complete(hrv_dir):
    out = build_report(hrv_dir, k=3)
    assert out == hrv_dir / "report.html"
    text = out.read_text(encoding="utf-8")
    page = parse(out)
    # nothing external: every src is a data URI, every href an in-page anchor that exists
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//|file:)""", text, re.IGNORECASE)
    assert not re.search(r"<(script|link|iframe)\b", text, re.IGNORECASE) and "@import" not in text and "url(" not in text
    assert page.hrefs and all(h.startswith("#") and h[1:] in page.ids for h in page.hrefs)
    # show's pictures were generated and embedded byte for byte, and so were the analysis pictures
    plots = hrv_dir / "plots"
    assert (plots / "heatmap.png").is_file()
    blobs = embedded_pngs(page)
    for f in [plots / "heatmap.png", plots / "similarity.png", plots / "top_heads.png", plots / "timesteps.png",
              plots / "bars" / "color.png", plots / "timesteps" / "plants.png", hrv_dir / "weakening" / "color.png",
              hrv_dir / "polysemy" / "grid.png", hrv_dir / "edits" / "run1" / "grid.png"]:
        assert f.read_bytes() in blobs, f
    for b in blobs:
        import io

        assert Image.open(io.BytesIO(b)).size[0] > 10
    # grouped by sub-folder, the folder's own files first
    titles = page.h2
    for t in ("Summary", "Top 3 heads per concept", "HRV pictures", "Other files in the HRV folder", "edits/run1",
              "polysemy", "weakening"):
        assert t in titles, (t, titles)
    assert titles.index("Other files in the HRV folder") < titles.index("edits/run1") < titles.index("weakening")
    # tables: settings, top heads, CSV, Markdown (escaped, links as text)
    hrv = HRV.load(hrv_dir)
    for c in CONCEPTS:
        best = hrv.heads[hrv.ranking(c)[0]].short_name
        assert re.search(rf"<td>{c}</td>.*?<td>{re.escape(best)} \(", text, re.DOTALL)
    assert "<th>guidance_scale</th><td>7.5</td>" in text and "tiny-sd" in text
    assert "<th>morhf</th>" in text and "0.235" in text
    assert "<h3>Notes</h3>" in text and "&lt;script&gt;" in text and "the paper (https://arxiv.org" in text
    assert "<td>down1.h3</td>" in text and "spearman" in text
    assert "hrv.safetensors" not in text and "report.html" not in text


def test_existing_plots_are_reused_unless_regenerate(hrv_dir):
    build_report(hrv_dir, k=2)
    heat = hrv_dir / "plots" / "heatmap.png"
    heat.write_bytes(write_png(hrv_dir / "x.png", 9).read_bytes())
    (hrv_dir / "x.png").unlink()
    marker = heat.read_bytes()
    build_report(hrv_dir, k=2)
    assert marker in embedded_pngs(parse(hrv_dir / "report.html"))
    build_report(hrv_dir, k=2, regenerate=True)
    assert heat.read_bytes() != marker
    assert heat.read_bytes() in embedded_pngs(parse(hrv_dir / "report.html"))


def test_markdown_subset():
    h = markdown_to_html("## Title\n\nsome `code` and **bold**\n\n- a\n- b\n\n```\n<raw>\n```\n| x | y |\n|:-|-:|\n| 1 | 2 |")
    assert "<h4>Title</h4>" in h and "<code>code</code>" in h and "<b>bold</b>" in h
    assert "<ul><li>a</li><li>b</li></ul>" in h and "<pre>&lt;raw&gt;</pre>" in h
    assert "<th>x</th><th>y</th>" in h and "<td>1</td><td>2</td>" in h


def test_report_cli(monkeypatch, hrv_dir, tmp_path, capsys):
    beside = tmp_path / "weakening-run"
    write_png(beside / "curve.png", 5)
    out = tmp_path / "r" / "report.html"
    assert cli(monkeypatch, "report", hrv_dir, "--out", out, "--include", beside, "--concepts", "color,Plants",
               "--k", "4") == 0
    assert capsys.readouterr().out.strip() == str(out)
    page = parse(out)
    assert "weakening-run" in page.h2 and (beside / "curve.png").read_bytes() in embedded_pngs(page)
    assert not (hrv_dir / "plots" / "bars" / "animals.png").exists()  # only the chosen concepts were drawn


@pytest.mark.parametrize("args, needle", [
    (["report", "{missing}"], "does not exist"),
    (["report", "{empty}"], "not an HRV folder"),
    (["report", "{hrv}", "--include", "{missing}"], "--include"),
    (["report", "{hrv}", "--concepts", "Smell"], "'Smell' not in this HRV"),
])
def test_report_errors_are_one_line(monkeypatch, capsys, tmp_path, hrv_dir, args, needle):
    (tmp_path / "empty").mkdir()
    subs = {"{missing}": tmp_path / "nope", "{empty}": tmp_path / "empty", "{hrv}": hrv_dir}
    assert cli(monkeypatch, *[subs.get(a, a) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err


CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p), None)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")
def test_report_renders_offline_in_headless_chromium(hrv_dir, tmp_path):
    out = build_report(hrv_dir, k=3)
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1800", f"--screenshot={shot}",
           out.resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert shot.is_file(), "Chromium wrote no screenshot"
    px = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    assert px.shape[:2] == (1800, 1200)
    top = px[:60].reshape(-1, 3).mean(axis=0)  # the dark header band rendered with its CSS
    assert top.max() < 90, top
    assert px.std() > 20 and len(np.unique(px.reshape(-1, 3), axis=0)) > 500  # pictures drawn, not blank


def test_many_pictures_are_capped_with_grids_first(hrv_dir):
    for i in range(30):
        write_png(hrv_dir / "edits-many" / f"img_{i:02d}.png", 100 + i, size=(8, 8))
    write_png(hrv_dir / "edits-many" / "zz_grid.png", 7)
    page = parse(build_report(hrv_dir, k=2, max_images=5))
    blobs = embedded_pngs(page)
    folder = sorted((hrv_dir / "edits-many").iterdir())
    embedded = [f.name for f in folder if f.read_bytes() in blobs]
    assert embedded == ["img_00.png", "img_01.png", "img_02.png", "img_03.png", "zz_grid.png"]
    assert "26 more pictures not embedded" in (hrv_dir / "report.html").read_text()
