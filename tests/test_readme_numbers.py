"""README numbers tied to their source: docs/world-report.md and the README's world blocks come from report.json."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from headlens.validation import render_from_json

ROOT = Path(__file__).resolve().parents[1]
REPORT_DIR = ROOT / "docs" / "world-report-joint"


@pytest.fixture(scope="module")
def report() -> dict:
    return json.loads((REPORT_DIR / "report.json").read_text(encoding="utf-8"))


def block(name: str) -> str:
    """The README text between ``<!-- name:begin -->`` and ``<!-- name:end -->``, whitespace collapsed."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(rf"<!-- {name}:begin -->(.*?)<!-- {name}:end -->", text, flags=re.S)
    assert m, f"README has no {name} block"
    return " ".join(m.group(1).split())


def num(x: float, digits: int = 2, sign: bool = False) -> str:
    """A number as the README prints it: fixed digits, a real minus sign, optionally an explicit plus."""
    s = f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"
    return s.replace("-", "−")


def ci(c: dict, digits: int = 2) -> str:
    return f"{num(c['mean'], digits)} [{num(c['low'], digits)}, {num(c['high'], digits)}]"


def pct(x: float, sign: bool = False) -> str:
    return f"{num(100 * x, 1, sign)} %"


def pct_ci(c: dict, sign: bool = False) -> str:
    return f"{pct(c['mean'], sign)} [{num(100 * c['low'], 1)}, {num(100 * c['high'], 1)}]"


def ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


@pytest.mark.parametrize("folder", sorted(p.parent for p in (ROOT / "docs").glob("world-report*/report.json")),
                         ids=lambda p: p.name)
def test_world_report_markdown_is_rendered_from_its_json(tmp_path, folder):
    """docs/world-report*.md is exactly what `render_from_json` writes from the committed report.json."""
    out = tmp_path / folder.name
    out.mkdir()
    shutil.copy(folder / "report.json", out / "report.json")
    rendered = render_from_json(out, tmp_path / f"{folder.name}.md").read_text(encoding="utf-8")
    committed = folder.with_suffix(".md").read_text(encoding="utf-8")
    assert rendered == committed, f"docs/{folder.name}.md differs from its report.json: re-render it with " \
                                  f"headlens.validation.render_from_json('docs/{folder.name}', 'docs/{folder.name}.md')"


def test_readme_world_numbers_come_from_report_json(report):
    text = block("world-numbers")
    cfg, hrv, w, eff = report["config"], report["hrv"], report["weakening"], report["effects"]["concepts"]
    ks = w["ks"]
    H = hrv["num_heads"]

    def curve(concept: str, k: int) -> tuple[str, str, str]:
        t = w["concepts"][concept]["tokens"]["words"]["curves"]
        i = ks.index(k)
        return tuple(num(t[o]["mean"][i]) for o in ("morhf", "random", "lerhf"))

    spear = hrv["trained_vs_control_spearman"].values()
    color, shape = eff["Color"], eff["Shape"]
    hub = color["largest_effects"][0]
    positive = sum(e for e in color["effects"] if e > 0)
    poly, hard = report["polysemy"], report["polysemy_hard"]
    p2p, ae = report["p2p"]["methods"], report["ae"]
    items = {c: v["items"] for c, v in w["concepts"].items()}
    want = [
        f"{cfg['steps']} DDIM steps, CFG {cfg['guidance']:g}",
        f"top-concept vote share per head {ci(hrv['trained']['concentration'])} vs "
        f"{ci(hrv['control']['concentration'])}",
        f"Spearman {num(min(spear))}…{num(max(spear))} per concept",
        f"k = {', '.join(map(str, ks))} heads",
        "({} → {} / {} / {} at k = 6".format(num(w["concepts"]["Size"]["tokens"]["words"]["curves"]["morhf"]["mean"][0]),
                                            *curve("Size", 6)),
        f"area random − MoRHF {ci(w['concepts']['Size']['tokens']['words']['area_random_morhf'])}",
        "at k = 20: {} / {} / {}".format(*curve("Shape", 20)),
        "Color at k = 6: {} / {} / {}".format(*curve("Color", 6)),
        f"{items['Color']} prompt × seed items per concept (Position: {items['Position']}",
        f"{round(100 * report['attention_mass']['overall']['pad'])} % of the attention mass sits on padding tokens",
        f"({color['items']} items × {color['heads']} heads per concept)",
        f"Spearman {ci(color['spearman'])} (Color), {ci(shape['spearman'])} (Shape), permutation p "
        f"{color['spearman_p_perm']:.2f} / {shape['spearman_p_perm']:.2f}",
        f"weakening `{hub['head']}` alone takes {round(100 * hub['effect'] / positive)} % of the summed positive "
        f"Color effect (the top three {round(100 * color['top3_share_of_positive_effect'])} %)",
        f"the Color HRV ranks it {ordinal(hub['hrv_rank'])} of {H}",
        f"at guidance {poly['guidance']:g} the fruit misreading is rare ({pct(poly['conditions']['plain']['fruit']['mean'])})",
        f"at guidance {hard['guidance']:g} it is real ({pct_ci(hard['conditions']['plain']['fruit'])})",
        f"does not change it ({pct_ci(hard['fruit_differences']['adjust'], sign=True)})",
        f"success {pct(p2p['P2P']['success']['mean'])} vs {pct(p2p['P2P-HRV']['success']['mean'])}, other attributes "
        f"kept {pct(p2p['P2P']['all_kept']['mean'])} vs {pct(p2p['P2P-HRV']['all_kept']['mean'])}",
        f"({ae['items']} prompts), an object missing: SD {pct(ae['methods']['SD']['object_missing']['mean'])}, "
        f"A&E {pct(ae['methods']['A&E']['object_missing']['mean'])}, "
        f"A&E-HRV {pct(ae['methods']['A&E-HRV']['object_missing']['mean'])}",
        f"A&E fixes neglect ({pct_ci(ae['diff_ae_minus_sd'], sign=True)})",
        f"adds nothing ({pct_ci(ae['diff_hrv_minus_ae'], sign=True)})",
        f"{H} heads with a few hub heads",
    ]
    missing = [s for s in want if s not in text]
    assert not missing, f"README world-numbers block does not say (from docs/world-report/report.json): {missing}"
    # the two numbers of the polysemy bullet that come from docs/world.md's experiment table, not the report
    world_md = (ROOT / "docs" / "world.md").read_text(encoding="utf-8")
    for label, value in (("'orange' column × 0 at every head |", "leaves {} %"),
                         ("adjust 'orange' toward Color, away from Shape (words+end) |", "halves it ({} %)")):
        row = next(line for line in world_md.splitlines() if label in line)
        measured = row.split("|")[2].split("%")[0].strip()
        assert value.format(measured) in text, (label, measured)


def test_readme_world_summary_matches_the_verdicts():
    """The one-paragraph summary names exactly the concepts the report's verdicts validate and contradict."""
    verdicts = {}
    report_md = (ROOT / "docs" / "world-report-joint.md").read_text(encoding="utf-8")
    for line in report_md.split("**Verdict.**", 1)[1].split("\n\n", 2)[1].splitlines():
        m = re.match(r"- (\w+) \(n=\d+\): .*?\((validated by weakening|partial|contradicted)\)", line)
        if m:
            verdicts.setdefault(m.group(2), []).append(m.group(1))
    assert verdicts["validated by weakening"] and verdicts["contradicted"]
    text = block("world-summary")
    m = re.search(r"validated by weakening for (.+?), partly for (.+?), and contradicted for (.+?)(?:[;.]|, and )", text)
    assert m, text
    named = [re.split(r",\s*|\s+and\s+", g) for g in m.groups()]
    assert named[0] == verdicts["validated by weakening"] and named[2] == verdicts["contradicted"]
    assert set(named[1]) <= set(verdicts.get("partial", []))
