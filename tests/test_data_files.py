"""Validate headlens' bundled data files (src/headlens/data) with the standard library only."""

from __future__ import annotations

import importlib.util
import re
import string
from collections import Counter
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser is published as "tomli"
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "src" / "headlens" / "data"
MAKE_PROMPTS = ROOT / "scripts" / "make_prompts.py"

FILES = [
    "concepts.toml",
    "imagenet_classes.txt",
    "prompts.txt",
    "weakening_templates.toml",
    "polysemous.toml",
    "edits.toml",
    "multi_concept.toml",
]
# Names used by the paper / spec and by downstream code.
REQUIRED_CONCEPTS = [
    "Color", "Material", "Animals", "Plants", "Image style", "Weather conditions", "Geometric patterns",
    "Objects", "Fruits",
    "Food", "People", "Vehicles", "Buildings", "Furniture", "Clothing", "Shape", "Texture", "Size",
    "Counting", "Lighting", "Facial expressions", "Pose", "Nature scenes", "Time of day",
]
EDIT_CONCEPTS = ["Color", "Material", "Geometric patterns", "Image style", "Weather conditions"]
MULTI_GROUPS = ["animal_animal", "animal_object", "object_object", "color_object"]
N_CLASSES = 1000


def load_toml(name: str) -> dict:
    with open(DATA / name, "rb") as f:
        return tomllib.load(f)


def text_lines(name: str) -> list[str]:
    """Non-comment lines of a text data file (comment lines must all be at the top)."""
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines) and lines[i].startswith("#"):
        i += 1
    body = lines[i:]
    assert not any(ln.startswith("#") for ln in body), f"{name}: comment lines are only allowed at the top"
    return body


def has_word(text: str, word: str) -> bool:
    """*word* occurs in *text* as a whole word (hyphenated compounds count), case-insensitive."""
    return re.search(rf"(?<![A-Za-z]){re.escape(word)}(?![A-Za-z])", text, flags=re.IGNORECASE) is not None


@pytest.fixture(scope="module")
def concepts() -> dict[str, list[str]]:
    return load_toml("concepts.toml")


@pytest.fixture(scope="module")
def classes() -> list[str]:
    return text_lines("imagenet_classes.txt")


# --------------------------------------------------------------------------------------------
# all files


@pytest.mark.parametrize("name", FILES)
def test_file_is_utf8_with_header_comment(name):
    text = (DATA / name).read_bytes().decode("utf-8")
    assert text.startswith("#"), f"{name} must start with a header comment"
    assert text.endswith("\n")
    assert "\r" not in text and "\t" not in text


# --------------------------------------------------------------------------------------------
# concepts.toml


def test_concepts_shape(concepts):
    assert len(concepts) == 44  # README: 44 concepts × 10 words
    for name, words in concepts.items():
        assert isinstance(words, list), name
        assert len(words) == 10, f"{name}: {len(words)} words, want exactly 10"
        for w in words:
            assert isinstance(w, str) and w, name
            assert w == w.strip().lower() and "  " not in w, f"{name}: {w!r} must be lowercase, trimmed"
            assert re.fullmatch(r"[a-z][a-z' -]*[a-z]", w), f"{name}: odd characters in {w!r}"


def test_concepts_required_names(concepts):
    missing = [c for c in REQUIRED_CONCEPTS if c not in concepts]
    assert not missing


def test_no_word_in_two_concepts(concepts):
    counts = Counter(w for words in concepts.values() for w in words)
    assert [w for w, n in counts.items() if n > 1] == []


def test_few_multi_word_concept_words(concepts):
    multi = [w for words in concepts.values() for w in words if " " in w]
    assert len(multi) <= 5, multi


def test_polysemy_word_placement(concepts):
    assert {"lavender", "rose"} <= set(concepts["Plants"])
    assert not {"lavender", "rose", "peach", "plum", "lime", "cherry", "lemon"} & set(concepts["Color"])
    assert "orange" in concepts["Color"] and "orange" not in concepts["Fruits"]
    assert {"apple", "peach"} <= set(concepts["Fruits"])


# --------------------------------------------------------------------------------------------
# imagenet_classes.txt


def test_classes(classes):
    assert len(classes) == N_CLASSES
    assert all(c and c == c.strip() and "  " not in c for c in classes)
    lowered = [c.lower() for c in classes]
    assert len(set(lowered)) == N_CLASSES, [c for c, n in Counter(lowered).items() if n > 1]


# --------------------------------------------------------------------------------------------
# prompts.txt


def test_prompts(classes):
    prompts = text_lines("prompts.txt")
    assert all(p and p == p.strip() and "  " not in p for p in prompts), "blank or untrimmed prompt line"
    assert len(prompts) == 2100  # README: 2,100 shipped prompts
    assert len(set(prompts)) == len(prompts), [p for p, n in Counter(prompts).items() if n > 1][:5]
    photos, rest = prompts[:N_CLASSES], prompts[N_CLASSES:]
    for cls, p in zip(classes, photos):
        assert p in (f"a photo of a {cls}.", f"a photo of an {cls}."), p
        if cls[0].lower() in "bcdfgjklmnpqrstvwxyz":
            assert p == f"a photo of a {cls}.", p
    assert sum(p.startswith("a photo of an ") for p in photos) > 50  # "an" before vowels is in use
    assert len(rest) == 1100
    for p in rest:
        assert 5 <= len(p.split()) <= 25, p
    # genuinely varied: many different opening words
    assert len({p.split()[0] for p in rest}) >= 40


def load_make_prompts():
    spec = importlib.util.spec_from_file_location("make_prompts", MAKE_PROMPTS)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_prompts_file_matches_generator():
    mod = load_make_prompts()
    expected = mod.render(mod.build_prompts())
    assert (DATA / "prompts.txt").read_text(encoding="utf-8") == expected, (
        "prompts.txt is out of date: run `python scripts/make_prompts.py`"
    )


def test_article_helper():
    mod = load_make_prompts()
    assert mod.a("apple") == "an apple"
    assert mod.a("Egyptian Mau") == "an Egyptian Mau"
    assert mod.a("dog") == "a dog"
    assert mod.a("unicycle") == "a unicycle"
    assert mod.a("one-piece swimsuit") == "a one-piece swimsuit"
    assert mod.a("hourglass") == "an hourglass"


# --------------------------------------------------------------------------------------------
# weakening_templates.toml

REFERENCE_TEMPLATES = {
    "Color": "a {color} {object}",
    "Material": "a {object} made of {material}",
    "Image style": "a {style} style painting of a {scene}",
    "Weather conditions": "a {animal} on a {weather} day",
    "Geometric patterns": "a {object} with a {pattern} pattern",
}


def test_weakening_templates(concepts):
    fams = load_toml("weakening_templates.toml")
    for name, tmpl in REFERENCE_TEMPLATES.items():
        assert fams[name]["template"] == tmpl
    for name in ["Animals", "Nature scenes", "Fruits"]:
        assert fams[name]["template"].startswith("a photo of a {"), name
    for name, fam in fams.items():
        assert name in concepts, f"unknown concept {name!r}"
        assert set(fam) == {"template", "target", "slots"}, name
        fields = {f for _, f, _, _ in string.Formatter().parse(fam["template"]) if f is not None}
        assert fields == set(fam["slots"]), name
        assert fam["target"] in fam["slots"], name
        for slot, words in fam["slots"].items():
            assert words and all(isinstance(w, str) and w.strip() == w and w for w in words), (name, slot)
            assert len(set(words)) == len(words), (name, slot)
        target_words = fam["slots"][fam["target"]]
        assert set(target_words) <= set(concepts[name]), (name, set(target_words) - set(concepts[name]))
        fam["template"].format(**{s: ws[0] for s, ws in fam["slots"].items()})
    assert len(fams["Color"]["slots"]["color"]) == 10
    assert len(fams["Color"]["slots"]["object"]) >= 8


# --------------------------------------------------------------------------------------------
# polysemous.toml


def test_polysemous(concepts):
    cases = load_toml("polysemous.toml")["prompt"]
    assert len(cases) >= 12
    assert len({c["prompt"] for c in cases}) == len(cases)
    for c in cases:
        assert set(c) == {"prompt", "word", "toward", "away"}, c
        assert has_word(c["prompt"], c["word"]), c
        assert c["toward"] in concepts and c["away"] in concepts, c
        assert c["toward"] != c["away"], c
    by_prompt = {c["prompt"]: c for c in cases}
    assert by_prompt["A vase in lavender color"] == {
        "prompt": "A vase in lavender color", "word": "lavender", "toward": "Color", "away": "Plants"}
    assert by_prompt["A rose-colored vase"]["word"] == "rose"


# --------------------------------------------------------------------------------------------
# edits.toml


def test_edits(concepts):
    edits = load_toml("edits.toml")["edit"]
    per = Counter(e["concept"] for e in edits)
    for c in EDIT_CONCEPTS:
        assert per[c] >= 10, c
    assert set(per) == set(EDIT_CONCEPTS)
    assert len({(e["source"], e["target"]) for e in edits}) == len(edits)
    for e in edits:
        assert set(e) == {"concept", "source", "target", "word"}, e
        src, tgt = e["source"].split(), e["target"].split()
        assert len(src) == len(tgt), e
        diff = [i for i, (x, y) in enumerate(zip(src, tgt)) if x != y]
        assert len(diff) == 1, e
        assert tgt[diff[0]].strip(string.punctuation) == e["word"], e
        assert e["word"] in concepts[e["concept"]], e


# --------------------------------------------------------------------------------------------
# multi_concept.toml


def test_multi_concept(concepts):
    groups = load_toml("multi_concept.toml")
    assert set(groups) == set(MULTI_GROUPS)
    for g in MULTI_GROUPS:
        entries = groups[g]
        assert len(entries) >= 12, g
        assert len({e["prompt"] for e in entries}) == len(entries), g
        for e in entries:
            allowed = {"prompt", "tokens", "modifiers"} if g == "color_object" else {"prompt", "tokens"}
            assert set(e) <= allowed and "tokens" in e, e
            pairs = e["tokens"] + e.get("modifiers", [])
            assert len(e["tokens"]) >= 2, e
            for pair in pairs:
                assert isinstance(pair, list) and len(pair) == 2, e
                word, concept = pair
                assert has_word(e["prompt"], word), (e["prompt"], word)
                assert concept in concepts, (e["prompt"], concept)
    for e in groups["animal_animal"]:
        assert [c for _, c in e["tokens"]] == ["Animals", "Animals"]
    for e in groups["color_object"]:
        assert [c for _, c in e["modifiers"]] == ["Color", "Color"]
        assert all(w in concepts["Color"] for w, _ in e["modifiers"])
