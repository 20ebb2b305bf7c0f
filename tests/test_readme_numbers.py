"""README numbers tied to their source: docs/world-report.md and the README's world blocks come from report.json."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from headlens.validation import render_from_json
from headlens.validation.compare import summary

ROOT = Path(__file__).resolve().parents[1]
REPORT_DIR = ROOT / "docs" / "world-report"  # the default model's report


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
    """Every number of the README's world-numbers block (the default model) is its report.json's, as printed."""
    text = block("world-numbers")
    joint = json.loads((ROOT / "docs" / "world-report-joint" / "report.json").read_text(encoding="utf-8"))
    cfg, hrv, w, eff = report["config"], report["hrv"], report["weakening"], report["effects"]["concepts"]
    ks = w["ks"]
    H = hrv["num_heads"]

    def curve(concept: str, k: int) -> str:
        t = w["concepts"][concept]["tokens"]["words"]["curves"]
        return " / ".join(num(t[o]["mean"][ks.index(k)]) for o in ("morhf", "random", "lerhf"))

    def mean(d: dict) -> float:
        return sum(d.values()) / len(d)

    spear = hrv["trained_vs_control_spearman"].values()
    color, shape = eff["Color"], eff["Shape"]
    chub, shub = color["largest_effects"][0], shape["largest_effects"][0]
    poly, hard = report["polysemy"], report["polysemy_hard"]
    p2p, ae = report["p2p"]["methods"], report["ae"]
    S = w["concepts"]["Shape"]["tokens"]
    bg = w["concepts"]["Background"]["tokens"]
    C = w["concepts"]["Color"]["tokens"]
    am, jam = report["attention_mass"]["overall"], joint["attention_mass"]["overall"]
    items = {c: v["items"] for c, v in w["concepts"].items()}
    ours, theirs = summary(report), summary(joint)
    words = {0: "none", 1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
    want = [
        f"{cfg['steps']} DDIM steps, CFG {cfg['guidance']:g}",
        f"top-concept vote share per head {ci(hrv['trained']['concentration'])} vs {ci(hrv['control']['concentration'])}",
        f"Spearman {num(min(spear))}…{num(max(spear))} per concept",
        f"mean ρ {num(mean(hrv['trained']['empty_prompt_spearman']))}; control "
        f"{num(mean(hrv['control']['empty_prompt_spearman']))}",
        f"k = {', '.join(map(str, ks))} heads",
        f"at k = 20 with `words`: {curve('Shape', 20)}; area random − MoRHF {ci(S['words']['area_random_morhf'])}, "
        f"LeRHF − random {ci(S['words']['area_lerhf_random'])}; with `words+end` "
        f"{ci(S['words+end']['area_random_morhf'])}, LeRHF − random {ci(S['words+end']['area_lerhf_random'])}",
        f"its top heads hurt more than random ones with `words` ({ci(C['words']['area_random_morhf'])})",
        f"Color at k = 20: {curve('Color', 20)}",
        "contradicted with `words+end`: random heads hurt more than the HRV's top heads (random − MoRHF "
        + ", ".join(num(w["concepts"][c]["tokens"]["words+end"]["area_random_morhf"]["mean"])
                    for c in ("Size", "Pattern", "Background")) + ")",
        f"{items['Color']} prompt × seed items per concept (Position: {items['Position']})",
        f"**Background** survives the weakening of every word column at every head ({pct(bg['words']['all_heads']['mean'])}) "
        f"and falls to {pct(bg['words+end']['all_heads']['mean'])} only when",
        f"{pct(am['words'])} on the prompt's words, {pct(am['pad'])} on padding tokens (the joint model: "
        f"{pct(jam['words'])} and {pct(jam['pad'])})",
        f"({color['items']} items × {color['heads']} heads per concept)",
        f"Spearman {ci(color['spearman'])} (Color), {ci(shape['spearman'])} (Shape), permutation p "
        f"{color['spearman_p_perm']:.2f} / {shape['spearman_p_perm']:.2f}",
        f"`{shub['head']}`, is its HRV's {ordinal(shub['hrv_rank'])}",
        f"`{chub['head']}`, is {ordinal(chub['hrv_rank'])} of {H}",
        f"carry {round(100 * color['top3_share_of_positive_effect'])} % of its summed positive effect",
        f"at guidance {poly['guidance']:g} the fruit misreading is rare ({pct(poly['conditions']['plain']['fruit']['mean'])})",
        f"'an orange circle' at guidance {hard['guidance']:g} ({pct_ci(hard['conditions']['plain']['fruit'])}; the joint "
        f"model: {pct(joint['polysemy_hard']['conditions']['plain']['fruit']['mean'])} at guidance "
        f"{joint['polysemy_hard']['guidance']:g})",
        f"adjusting changes it by {pct_ci(hard['fruit_differences']['adjust'], sign=True)}, against "
        f"{pct_ci(hard['fruit_differences']['adjust (head-shuffled HRV)'], sign=True)} with a head-shuffled HRV",
        f"(the joint model: {pct(joint['polysemy_hard']['fruit_differences']['adjust']['mean'], sign=True)})",
        f"(orange circles {pct_ci(hard['differences']['adjust'], sign=True)}); at guidance {poly['guidance']:g} "
        f"adjusting costs colour sense ({pct(poly['differences']['adjust']['mean'], sign=True)})",
        f"colour edits ({report['p2p']['items']}): success {pct(p2p['P2P']['success']['mean'])} vs "
        f"{pct(p2p['P2P-HRV']['success']['mean'])} (P2P-HRV − P2P {pct_ci(report['p2p']['success_diff_hrv_minus_p2p'], sign=True)})",
        f"other attributes kept {pct(p2p['P2P']['all_kept']['mean'])} vs {pct(p2p['P2P-HRV']['all_kept']['mean'])}",
        f"({ae['items']} prompts), an object missing: SD {pct(ae['methods']['SD']['object_missing']['mean'])}, "
        f"A&E {pct(ae['methods']['A&E']['object_missing']['mean'])}, "
        f"A&E-HRV {pct(ae['methods']['A&E-HRV']['object_missing']['mean'])}",
        f"A&E does not help on this model ({pct_ci(ae['diff_ae_minus_sd'], sign=True)}) and A&E-HRV misses more "
        f"({pct_ci(ae['diff_hrv_minus_ae'], sign=True)})",
        f"(an object missing {pct(ae['methods']['SD']['object_missing']['mean'])} against "
        f"{pct(joint['ae']['methods']['SD']['object_missing']['mean'])})",
        f"Color's `{chub['head']}` alone carries most of its effect, ranked {ordinal(chub['hrv_rank'])} by its HRV",
        f"{words[len(ours['contradicted'])]} contradicted here against {words[len(theirs['contradicted'])]} there",
        f"({pct(jam['end'] + jam['pad'])} → {pct(am['end'] + am['pad'])} on end + padding tokens)",
    ]
    missing = [s for s in want if s not in text]
    assert not missing, f"README world-numbers block does not say (from docs/world-report/report.json): {missing}"
    # the words around the numbers: "does not help" = an interval around 0, "misses more" = one above 0, "alone
    # carries most" = over half the summed positive effect, one concept validated on each model
    assert ae["diff_ae_minus_sd"]["low"] < 0 < ae["diff_ae_minus_sd"]["high"] and ae["diff_hrv_minus_ae"]["low"] > 0
    positive = [e for e in color["effects"] if e > 0]
    assert chub["effect"] > sum(positive) / 2
    assert len(ours["validated"]) == len(theirs["validated"]) == 1
    assert "one concept validated on each model" in text and hard["fruit_differences"]["adjust"]["high"] < 0


def _verdicts(report_md: Path) -> dict[str, list[str]]:
    """Concepts by overall weakening verdict, as the report's Verdict list states them."""
    verdicts: dict[str, list[str]] = {}
    text = report_md.read_text(encoding="utf-8")
    for line in text.split("**Verdict.**", 1)[1].split("\n\n", 2)[1].splitlines():
        m = re.match(r"- (\w+) \(n=\d+\): .*?\((validated by weakening|partial|contradicted)\)", line)
        if m:
            verdicts.setdefault(m.group(2), []).append(m.group(1))
    return verdicts


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _names(group: str) -> list[str]:
    return [x for x in re.split(r",\s*|\s+and\s+", group) if x]


@pytest.mark.parametrize("report_md", ["world-report.md", "world-report-joint.md"])
def test_readme_world_summary_matches_the_verdicts(report_md):
    """The summary paragraph names exactly the concepts each model's report validates and contradicts."""
    verdicts = _verdicts(ROOT / "docs" / report_md)
    assert verdicts["validated by weakening"] and verdicts["contradicted"]
    text = block("world-summary")
    after = text.split(f"(docs/{report_md})", 1)[1]
    m = re.match(r"(?:its HRVs are |is )?validated by weakening for (.+?)(?:, partly for (.+?))?,? and "
                 r"contradicted for (.+?)\.", after.lstrip(") :,"))
    assert m, after[:300]
    assert _names(m.group(1)) == verdicts["validated by weakening"]
    assert _names(m.group(3)) == verdicts["contradicted"]
    assert set(_names(m.group(2) or "")) == set(verdicts.get("partial", []))
    # the concepts whose curves do not differ from random heads are named right after
    md = (ROOT / "docs" / report_md).read_text(encoding="utf-8")
    same = re.findall(r"^- (\w+) \(n=\d+\): no difference from random heads", md, flags=re.M)
    rest = after.lstrip(") :,")[m.end():].strip()
    if same:
        assert rest.startswith(f"{_and(same)} shows no difference from random heads"), rest[:120]
    else:
        assert "no difference" not in rest.split("The first", 1)[0]
