"""One self-contained HTML page about an HRV folder and whatever analyses were saved next to it.

Everything is inline (CSS in a ``<style>`` block, pictures as base64 ``data:`` URIs, no scripts,
no external resources), so the file opens offline and can be mailed around. Contents:

* a summary (model, run settings from the HRV metadata, head layout by place and resolution),
* top heads per concept,
* the pictures of ``headlens show`` (generated into ``<hrv>/plots`` when missing),
* the analyses of this HRV — found inside its folder or beside it (sibling folders whose run files
  name the HRV's fingerprint, see :mod:`headlens.report_analyses`), or given with ``include`` — each
  with its headline numbers (areas with CIs and verdicts, Spearman with p, success rates) and picture,
* every other PNG/JPEG/CSV/Markdown/JSON/text file found inside the HRV folder (and any extra
  folders given), grouped by sub-folder.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from . import __version__, plots
from .hrv import HRV, META_FILE, TENSORS_FILE

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp"}
TABLE_TYPES = {".csv", ".tsv"}
TEXT_TYPES = {".md", ".markdown", ".txt", ".json"}
SKIP_NAMES = {META_FILE, TENSORS_FILE, "checkpoint.json", "checkpoint.safetensors"}
MAX_IMAGE_BYTES = 8 << 20
MAX_TEXT_CHARS = 20_000
DEFAULT_PLOTS_DIR = "plots"

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#26344a;color:#fff;padding:18px 28px}
header h1{margin:0;font-size:22px}header p{margin:4px 0 0;color:#c9d3e3;font-size:13px}
main{padding:12px 28px 40px;max-width:1500px}
nav{font-size:13px;margin:10px 0 18px}nav a{margin-right:14px;color:#26344a}
h2{border-bottom:2px solid #26344a;padding-bottom:4px;margin-top:34px}
h3{margin:22px 0 6px}h4{margin:14px 0 4px;font-size:14px}
table{border-collapse:collapse;font-size:12px;margin:6px 0 14px;background:#fff}
th,td{border:1px solid #d6d6d6;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#eef1f6}
figure{margin:10px 0 18px}figure img{max-width:100%;height:auto;border:1px solid #ddd;background:#fff}
figcaption{font-size:12px;color:#555;margin-top:3px}
details{margin:6px 0;background:#fff;border:1px solid #e2e2e2;padding:4px 10px}
summary{cursor:pointer;font-weight:600;font-size:13px}
pre{background:#f3f3f3;padding:8px;overflow-x:auto;font-size:12px}
.scroll{overflow-x:auto}.note{color:#777;font-size:12px}.md{background:#fff;padding:4px 12px;border:1px solid #e2e2e2}
"""


# ---------------------------------------------------------------------------------------------- pieces
def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _anchor(text: str) -> str:
    return "s-" + (re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x")


def image_tag(path: str | Path, alt: str = "", caption: str | None = None) -> str:
    """A ``<figure>`` with the picture embedded as a base64 data URI."""
    p = Path(path)
    mime = IMAGE_TYPES.get(p.suffix.lower(), "application/octet-stream")
    data = base64.b64encode(p.read_bytes()).decode("ascii")
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{_e(alt or p.name)}" src="data:{mime};base64,{data}">{cap}</figure>'


def dict_table(rows: Iterable[tuple[str, object]]) -> str:
    """Two-column key/value table."""
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return "—" if v is None else str(v)


def frame_table(df, max_rows: int = 60) -> str:
    """A pandas DataFrame as an escaped HTML table (first ``max_rows`` rows)."""
    note = ""
    if len(df) > max_rows:
        note = f'<p class="note">first {max_rows} of {len(df)} rows</p>'
        df = df.head(max_rows)
    return f'<div class="scroll">{df.to_html(index=False, escape=True, border=0, float_format=lambda x: f"{x:.4g}")}</div>{note}'


def markdown_to_html(text: str) -> str:
    """A small, safe Markdown subset: headings, pipe tables, lists, fenced code, paragraphs, `code`, **bold**.

    Everything is escaped; links are shown as text (no external references are created).
    """
    out: list[str] = []
    lines = text.splitlines()
    i = 0

    def inline(s: str) -> str:
        s = _e(s)
        s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
        s = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", s)
        s = re.sub(r"!?\[([^\]]*)\]\(([^)]*)\)", r"\1 (\2)", s)
        return s

    while i < len(lines):
        line = lines[i]
        if line.strip().startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            out.append("<pre>" + _e("\n".join(lines[i + 1:j])) + "</pre>")
            i = j + 1
            continue
        m = re.match(r"^(#{1,6})\s+(.*)$", line)
        if m:
            level = min(len(m.group(1)) + 2, 6)
            out.append(f"<h{level}>{inline(m.group(2))}</h{level}>")
            i += 1
            continue
        if line.strip().startswith("|") and i + 1 < len(lines) and re.match(r"^\s*\|?[\s:|-]+\|?\s*$", lines[i + 1]) \
                and "-" in lines[i + 1]:
            def cells(s: str) -> list[str]:
                s = s.strip()
                s = s.removeprefix("|")
                s = s[:-1] if s.endswith("|") and not s.endswith("\\|") else s
                return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", s)]

            head = "".join(f"<th>{inline(c)}</th>" for c in cells(line))
            rows, j = [], i + 2
            while j < len(lines) and lines[j].strip().startswith("|"):
                rows.append("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in cells(lines[j])) + "</tr>")
                j += 1
            out.append(f'<div class="scroll"><table><tr>{head}</tr>{"".join(rows)}</table></div>')
            i = j
            continue
        if re.match(r"^\s*([-*+]|\d+\.)\s+", line):
            items, j = [], i
            while j < len(lines) and re.match(r"^\s*([-*+]|\d+\.)\s+", lines[j]):
                items.append("<li>" + inline(re.sub(r"^\s*([-*+]|\d+\.)\s+", "", lines[j])) + "</li>")
                j += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            i = j
            continue
        if not line.strip():
            i += 1
            continue
        para, j = [], i
        while j < len(lines) and lines[j].strip() and not re.match(r"^(#|\||```|\s*([-*+]|\d+\.)\s)", lines[j]):
            para.append(lines[j])
            j += 1
        if not para:  # a line that looked like a block start but was not one
            para, j = [line], i + 1
        out.append("<p>" + inline(" ".join(para)) + "</p>")
        i = j
    return "\n".join(out)


def file_block(path: Path, root: Path, max_rows: int = 60) -> str:
    """HTML for one discovered file: embedded picture, table, rendered Markdown or text."""
    rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
    suffix = path.suffix.lower()
    if suffix in IMAGE_TYPES:
        if path.stat().st_size > MAX_IMAGE_BYTES:
            return f'<p class="note">{_e(rel)}: picture too large to embed ({path.stat().st_size >> 20} MB)</p>'
        return image_tag(path, rel, rel)
    if suffix in TABLE_TYPES:
        import pandas as pd

        try:
            df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
        except (ValueError, UnicodeDecodeError, OSError) as e:  # malformed tables are shown as a note
            return f"<h4>{_e(rel)}</h4><p class=\"note\">unreadable table ({_e(type(e).__name__)})</p>"
        return f"<h4>{_e(rel)}</h4>{frame_table(df, max_rows)}"
    text = path.read_text(encoding="utf-8", errors="replace")
    cut = ""
    if len(text) > MAX_TEXT_CHARS:
        text, cut = text[:MAX_TEXT_CHARS], f'<p class="note">first {MAX_TEXT_CHARS} characters shown</p>'
    if suffix in (".md", ".markdown"):
        return f'<h4>{_e(rel)}</h4><div class="md">{markdown_to_html(text)}</div>{cut}'
    if suffix == ".json":
        try:
            text = json.dumps(json.loads(text), indent=2)[:MAX_TEXT_CHARS]
        except ValueError:
            pass
    return f"<h4>{_e(rel)}</h4><pre>{_e(text)}</pre>{cut}"


SUMMARY_WORDS = ("grid", "curve", "plot", "summary", "sheet", "overview", "report")


def group_html(files: Sequence[Path], root: Path, max_rows: int = 60, max_images: int = 24) -> str:
    """One folder's files: tables and texts, then at most ``max_images`` pictures (grids and curves first)."""
    images = [f for f in files if f.suffix.lower() in IMAGE_TYPES]
    others = [f for f in files if f.suffix.lower() not in IMAGE_TYPES]
    images.sort(key=lambda f: (not any(w in f.name.lower() for w in SUMMARY_WORDS), _natural(f)))
    shown, rest = images[:max_images], images[max_images:]
    parts = [file_block(f, root, max_rows) for f in shown + others]
    if rest:
        names = ", ".join(f.name for f in rest[:20]) + (", …" if len(rest) > 20 else "")
        parts.append(f'<p class="note">{len(rest)} more pictures not embedded: {_e(names)}</p>')
    return "".join(parts)


def _natural(p: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.as_posix())]


def discover(root: str | Path, exclude: Sequence[str | Path] = ()) -> dict[str, list[Path]]:
    """Displayable files under ``root`` grouped by sub-folder (``"."`` for the folder itself)."""
    root = Path(root)
    skip = [Path(x).resolve() for x in exclude]
    wanted = set(IMAGE_TYPES) | TABLE_TYPES | TEXT_TYPES
    groups: dict[str, list[Path]] = {}
    for p in sorted(root.rglob("*"), key=_natural):
        if not p.is_file() or p.suffix.lower() not in wanted or p.name in SKIP_NAMES or p.name.startswith("."):
            continue
        rp = p.resolve()
        if any(rp == s or s in rp.parents for s in skip):
            continue
        parent = p.parent.relative_to(root).as_posix()
        groups.setdefault(parent, []).append(p)
    return groups


def _layout_rows(hrv: HRV, latent_size) -> list[dict]:
    rows = []
    for span in plots.resolution_spans(hrv.heads, latent_size):
        layers = [l for l in hrv.heads.layers if span.start <= l.head_offset < span.stop]
        counts = sorted({l.num_heads for l in layers})
        rows.append({"place": layers[0].place, "resolution": span.label,
                     "layers": f"{plots.layer_label(layers[0])}–{plots.layer_label(layers[-1])}" if len(layers) > 1
                     else plots.layer_label(layers[0]),
                     "heads per layer": "/".join(map(str, counts)), "heads": span.stop - span.start,
                     "head indices": f"{span.start}–{span.stop - 1}"})
    return rows


# ---------------------------------------------------------------------------------------------- report
def build_report(hrv_dir: str | Path, out: str | Path | None = None, *, k: int = 10,
                 plots_dir: str | Path | None = None, regenerate: bool = False,
                 include: Sequence[str | Path] = (), concepts: Sequence[str] | None = None,
                 latent_size=None, max_rows: int = 60, max_images: int = 24) -> Path:
    """Write the HTML report of an HRV folder (default ``<hrv_dir>/report.html``); returns its path."""
    import pandas as pd

    hrv_dir = Path(hrv_dir)
    if not hrv_dir.is_dir():
        raise FileNotFoundError(f"HRV folder {str(hrv_dir)!r} does not exist; create one with `headlens build`")
    hrv = HRV.load(hrv_dir)
    names = [hrv.concepts[hrv.concept_index(c)] for c in concepts] if concepts else list(hrv.concepts)
    out = Path(out) if out is not None else hrv_dir / "report.html"
    pdir = Path(plots_dir) if plots_dir is not None else hrv_dir / DEFAULT_PLOTS_DIR
    ls = latent_size if latent_size is not None else plots.latent_size_from_metadata(hrv.metadata)
    if regenerate or not (pdir / plots.HEATMAP_FILE).is_file():
        plots.save_all(hrv, pdir, concepts=names, k=k, latent_size=ls)

    model = plots.display_model_name(hrv.metadata.get("model"))
    sections: list[tuple[str, str]] = []

    # summary
    T = int(hrv.votes.shape[0]) if hrv.votes is not None else 0
    full = str(hrv.metadata.get("model") or "")
    facts = [("model", model if full in ("", model) else f"{model} ({full})"), ("heads", len(hrv.heads)), ("cross-attention layers", len(hrv.heads.layers)),
             ("concepts", len(hrv.concepts)), ("UNet evaluations with votes", T or "— (imported matrix)"),
             ("total votes", int(hrv.votes.sum()) if hrv.votes is not None else "—"),
             ("latent size", f"{ls[0]}×{ls[1]}" if ls else "unknown (resolutions shown relative to the latent)"),
             ("HRV folder", str(hrv_dir.resolve()))]
    settings = [(k_, v) for k_, v in hrv.metadata.items() if k_ != "model"]
    body = "<h3>Model and HRV</h3>" + dict_table(facts)
    if settings:
        body += "<h3>Settings (from the HRV metadata)</h3>" + dict_table(settings)
    body += "<h3>Head layout</h3>" + frame_table(pd.DataFrame(_layout_rows(hrv, ls)), 1000)
    sections.append(("Summary", body))

    # top heads
    top = plots.top_heads_table(hrv, k, names, ls)
    wide = []
    for name, g in top.groupby("concept", sort=False):
        words = ", ".join(hrv.words.get(name, [])[:10])
        wide.append({"concept": name, "words": words,
                     **{f"#{r.rank}": f"{r.head} ({r.hrv:.2f})" for r in g.itertuples()}})
    sections.append((f"Top {k} heads per concept", frame_table(pd.DataFrame(wide), 10_000)
                     + '<p class="note">head = place + layer inside the place + head number (e.g. down1.h3); '
                       "HRV in brackets (mean over heads = 1).</p>"))

    # show's pictures
    pics = []
    for fname, caption in ((plots.HEATMAP_FILE, "HRVs: concepts × heads, grouped by place, layer and resolution"),
                           (plots.SIMILARITY_FILE, "Similarity of concepts' HRVs, average-linkage order"),
                           (plots.TOP_HEADS_PNG, "Top heads per concept"),
                           (plots.TIMESTEP_SUMMARY_FILE, "Agreement of each step's HRV with the overall HRV")):
        if (pdir / fname).is_file():
            pics.append(image_tag(pdir / fname, fname, caption))
    per_concept = []
    for name in names:
        parts = [image_tag(f, f.name) for f in (pdir / plots.BARS_DIR / f"{plots.slug(name)}.png",
                                                  pdir / plots.TIMESTEPS_DIR / f"{plots.slug(name)}.png") if f.is_file()]
        if parts:
            per_concept.append(f"<details><summary>{_e(name)}</summary>{''.join(parts)}</details>")
    body = "".join(pics)
    if per_concept:
        body += "<h3>Per concept: HRV per head and over the denoising steps</h3>" + "".join(per_concept)
    sections.append(("HRV pictures", body))

    # analyses of this HRV (inside its folder, beside it, or given), each with its headline numbers
    from .report_analyses import analysis_html, describe, find_analyses

    for extra in include:
        if not Path(extra).is_dir():
            raise FileNotFoundError(f"--include folder {str(extra)!r} does not exist")
    described = []
    for d in [*find_analyses(hrv_dir, hrv.fingerprint, exclude=(pdir,)), *map(Path, include)]:
        a = describe(d)
        if a is not None and all(a.folder.resolve() != b.folder.resolve() for b in described):
            described.append(a)
    for a in described:
        sections.append((a.title, analysis_html(a, image_tag, hrv_dir.parent)))

    # everything else
    exclude = [pdir, out, *(a.folder for a in described)]
    found = [(hrv_dir, g, files) for g, files in sorted(discover(hrv_dir, exclude).items(),
                                                         key=lambda kv: (kv[0] != ".", _natural(Path(kv[0]))))]
    for extra in include:
        extra = Path(extra)
        if any(extra.resolve() == a.folder.resolve() for a in described):
            continue
        found += [(extra, f"{extra.name}/{g}" if g != "." else extra.name, files)
                  for g, files in discover(extra, exclude).items()]
    for root, group, files in found:
        title = "Other files in the HRV folder" if group == "." else group
        sections.append((title, group_html(files, root, max_rows, max_images)))

    page = _page(f"headlens report — {model}", sections,
                 f"{len(hrv.concepts)} concepts × {len(hrv.heads)} heads · headlens {__version__} · "
                 f"{_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out


def _page(title: str, sections: list[tuple[str, str]], subtitle: str) -> str:
    ids = [f"{_anchor(t)}-{i}" for i, (t, _) in enumerate(sections)]
    nav = "".join(f'<a href="#{a}">{_e(t)}</a>' for a, (t, _) in zip(ids, sections))
    body = "".join(f'<section id="{a}"><h2>{_e(t)}</h2>{b}</section>' for a, (t, b) in zip(ids, sections))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{_e(title)}</h1><p>{_e(subtitle)}</p></header>"
            f"<main><nav>{nav}</nav>{body}</main></body></html>\n")
