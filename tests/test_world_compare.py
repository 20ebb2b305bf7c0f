"""`headlens world compare`: side-by-side tables whose every number is the source report's."""
from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from headlens.cli import app
from headlens.cli.common import UserError
from headlens.validation.compare import DESCRIPTIONS, render_comparison, weakening_verdict
from headlens.validation.markdown import _f

REPORT = Path(__file__).parents[1] / "docs" / "world-report-joint" / "report.json"  # any full report serves as data


def _two(tmp_path):
    a = json.loads(REPORT.read_text())
    b = json.loads(REPORT.read_text())
    b["attention_mass"]["overall"] = {"start": 0.5, "words": 0.25, "end": 0.125, "pad": 0.125}
    t = b["weakening"]["concepts"]["Color"]["tokens"]["words"]
    t["area_random_morhf"] = {"mean": 0.2, "low": 0.1, "high": 0.3, "n": 200}
    t["area_lerhf_random"] = {"mean": 0.05, "low": 0.01, "high": 0.09, "n": 200}
    for name, r in (("A", a), ("B", b)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(r))
    return a, b


def test_comparison_rows_come_from_each_report(tmp_path) -> None:
    a, b = _two(tmp_path)
    md = render_comparison({"A": a, "B": b})
    rows = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")}
    pa = a["attention_mass"]["overall"]["pad"]
    assert rows["pad"] == f"| pad | {100 * pa:.1f} % | 12.5 % |"
    assert rows["start"].endswith("| 50.0 % |")
    color_words = md.split("### token set `words`")[1].split("###")[0]
    line = next(x for x in color_words.splitlines() if x.startswith("| Color |"))
    ta = a["weakening"]["concepts"]["Color"]["tokens"]["words"]
    assert f"random − MoRHF {_f(ta['area_random_morhf'])}" in line.split(" | ")[1]
    assert line.split(" | ")[2].startswith("validated (MoRHF < random < LeRHF); random − MoRHF 0.200 [0.100, 0.300]")
    e = a["effects"]["concepts"]["Color"]
    effects = md.split("## Single-head effects vs HRV")[1].split("##")[0]
    line = next(x for x in effects.splitlines() if x.startswith("| Color |"))
    assert line.split(" | ")[1] == f"{_f(e['spearman'], d=2)}, p {e['spearman_p_perm']:.2f} (n={e['items']} items × {e['heads']} heads)"
    # the hard polysemy case shows adjusting beside its head-shuffled control
    d = a["polysemy_hard"]["fruit_differences"]
    assert rows["hard polysemy: adjusting, change in fruit rate"].split(" | ")[1] == _f(d["adjust"], True)
    assert (rows["hard polysemy: adjusting with a head-shuffled HRV (control), change in fruit rate"].split(" | ")[1]
            == _f(d["adjust (head-shuffled HRV)"], True))


def test_verdict_uses_both_intervals() -> None:
    c = {"chance": 0.1, "tokens": {"w": {"baseline": {"mean": 0.9, "low": 0.8, "high": 0.95},
                                         "area_random_morhf": {"mean": 0.1, "low": 0.05, "high": 0.2},
                                         "area_lerhf_random": {"mean": 0.0, "low": -0.1, "high": 0.1}}}}
    assert weakening_verdict(c, "w") == "top heads matter more than random"
    c["tokens"]["w"]["area_lerhf_random"] = {"mean": 0.1, "low": 0.02, "high": 0.2}
    assert weakening_verdict(c, "w") == "validated (MoRHF < random < LeRHF)"
    c["tokens"]["w"]["area_random_morhf"] = {"mean": -0.1, "low": -0.2, "high": -0.05}
    assert weakening_verdict(c, "w").startswith("contradicted")
    c["tokens"]["w"]["baseline"] = {"mean": 0.1, "low": 0.05, "high": 0.15}
    assert weakening_verdict(c, "w") == "not followed"


def test_compare_cli(tmp_path) -> None:
    _two(tmp_path)
    out = tmp_path / "cmp.md"
    r = CliRunner().invoke(app, ["world", "compare", f"A={tmp_path / 'A'}", f"B={tmp_path / 'B'}", "--markdown", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_text().count("| `A` | `B` |") >= 5
    bad = CliRunner().invoke(app, ["world", "compare", f"A={tmp_path / 'nope'}", "--markdown", str(out)])
    assert isinstance(bad.exception, UserError) and str(bad.exception).startswith("no report.json in")
    bad = CliRunner().invoke(app, ["world", "compare", "justafolder"])
    assert isinstance(bad.exception, UserError) and "give NAME=FOLDER" in str(bad.exception)


def test_at_a_glance_groups_match_each_shipped_report_verdicts() -> None:
    """The 'At a glance' groups of docs/world-regimes.md are the verdicts each shipped report's Markdown prints."""
    import re

    from headlens.validation.compare import summary

    docs = Path(__file__).parents[1] / "docs"
    names = {"validated by weakening": "validated", "partial": "partial", "contradicted": "contradicted"}
    for folder in sorted(docs.glob("world-report*/report.json")):
        md = folder.parent.with_suffix(".md").read_text(encoding="utf-8")
        stated: dict[str, list[str]] = {}
        for line in md.split("**Verdict.**", 1)[1].split("\n\n", 2)[1].splitlines():
            m = re.match(r"- (\w+) \(n=\d+\): .*?\((validated by weakening|partial|contradicted)\)", line)
            if m:
                stated.setdefault(names[m.group(2)], []).append(m.group(1))
        s = summary(json.loads(folder.read_text()))
        for key in names.values():
            assert s[key] == stated.get(key, []), (folder.parent.name, key)
        overall = json.loads(folder.read_text())["attention_mass"]["overall"]
        assert abs(s["end_pad"] - overall["end"] - overall["pad"]) < 1e-12
    regimes = (docs / "world-regimes.md").read_text(encoding="utf-8")
    reports = {n: json.loads((docs / d / "report.json").read_text()) for n, d in
               (("world", "world-report"), ("world-joint", "world-report-joint"))}
    assert render_comparison(reports, DESCRIPTIONS) == regimes, "re-run `headlens world compare` (README command)"


def test_ranking_verdict_names_the_direction() -> None:
    """A significant negative ρ is the opposite of a prediction, not 'no relation'; the shipped reports say so."""
    import re

    from headlens.analysis.verdict import ranking_verdict

    assert ranking_verdict(0.6, 0.001) == "beyond a random ranking"
    assert ranking_verdict(0.6, 0.2) == ranking_verdict(-0.6, 0.2) == ranking_verdict(0.6, None) \
        == "not beyond a random ranking"
    assert ranking_verdict(-0.3, 0.01).startswith("inverted")
    for folder in ("world-report", "world-report-joint"):
        docs = Path(__file__).parents[1] / "docs"
        r = json.loads((docs / folder / "report.json").read_text())
        md = (docs / f"{folder}.md").read_text()
        for concept, e in r["effects"]["concepts"].items():
            line = re.search(rf"- single heads, {concept}: ρ\(effect, HRV\) (\S+) — (.+?) \(permutation p", md)
            assert line, (folder, concept)
            assert line.group(2) == ranking_verdict(e["spearman"]["mean"], e["spearman_p_perm"]), (folder, concept)
