"""The command line as a user meets it (issue 14): the real commands, run in process like the console script.

Every test runs `headlens ...` through `run_app` (what the `headlens` entry point calls) on the tiny
model or the bundled world model and checks the exit code, the LAST line of the output, and which
files were (not) written.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_inprocess import cli

import headlens
from headlens import HRV, HeadIndex
from headlens.cli import app
from headlens.cli.common import run_app
from headlens.testing import tiny_unet

# every shipped world report (docs/world-report: the default model; docs/world-report-joint: the joint one)
SHIPPED_REPORTS = sorted((Path(__file__).parents[1] / "docs").glob("world-report*/report.json"))

DEVICE_COMMANDS = {
    "build": ["build", "-m", "tiny", "--max-prompts", "1", "-n", "1"],
    "generate": ["generate", "a red car", "-a", "red:Color:Plants", "-m", "tiny", "-n", "1", "--hrv", "{hrv}"],
    "weaken": ["weaken", "-c", "Color", "-m", "tiny", "-n", "1", "--hrv", "{hrv}"],
    "validate": ["validate", "-c", "Color", "-m", "tiny", "-n", "1", "--hrv", "{hrv}"],
    "edit": ["edit", "--source", "a red car", "--target", "a blue car", "-m", "tiny", "-n", "1"],
    "excite": ["excite", "a cat and a dog", "-t", "cat:Animals", "-t", "dog:Animals", "-m", "tiny", "-n", "1"],
    "maps": ["maps", "a red car", "-w", "car", "-m", "tiny", "-n", "1"],
    "reproduce": ["reproduce", "-m", "tiny", "--build-prompts", "1", "-n", "1"],
}


@pytest.fixture(scope="module")
def hrv_dir(tmp_path_factory):
    heads = HeadIndex.from_unet(tiny_unet())
    m = torch.rand(3, len(heads), generator=torch.Generator().manual_seed(0)) * 2
    d = tmp_path_factory.mktemp("hrvs") / "hrv"
    HRV.from_matrix(m, heads, ["Color", "Plants", "Shape"],
                    words={"Color": ["red", "blue"], "Plants": ["lavender"], "Shape": ["square"]}).save(d)
    return d


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: checks must come first."""
    def boom(*_a, **_k):
        raise AssertionError("a model was loaded before the check")

    monkeypatch.setattr("headlens.testing.tiny_sd_pipeline", boom)
    monkeypatch.setattr("headlens.world.load_pipeline", boom)


def last(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def one_line_error(code: int, err: str, *needles: str) -> str:
    """The run failed with code 2 and a one-line `error:` naming every needle, no traceback."""
    line = last(err)
    assert code == 2, err
    assert line.startswith("error:") and "Traceback" not in err, err
    for n in needles:
        assert n in line, (n, line)
    return line


# ---------------------------------------------------------------------------------------------- 1. late failures
@pytest.mark.parametrize("device", ["cuda", "cuda:7", "mps", "tpu9"])
@pytest.mark.parametrize("command", sorted(DEVICE_COMMANDS))
def test_unavailable_device_is_one_line_before_the_model_loads(monkeypatch, capsys, tmp_path, hrv_dir, no_model,
                                                               command, device):
    if device.startswith("cuda") and torch.cuda.is_available() and device == "cuda":
        pytest.skip("this machine has CUDA")
    args = [a.format(hrv=hrv_dir) for a in DEVICE_COMMANDS[command]]
    out = tmp_path / "out"
    code, _, err = cli(monkeypatch, capsys, *args, "--out", out, "--device", device)
    one_line_error(code, err, "--device", "--device cpu" if device != "tpu9" else "--device")
    assert not out.exists()


@pytest.mark.parametrize("command", ["generate", "weaken", "validate", "edit", "excite", "maps", "build", "reproduce"])
def test_output_under_a_file_fails_before_the_model_loads(monkeypatch, capsys, tmp_path, hrv_dir, no_model, command):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    args = [a.format(hrv=hrv_dir) for a in DEVICE_COMMANDS[command]]
    code, _, err = cli(monkeypatch, capsys, *args, "--out", blocker / "run")
    one_line_error(code, err, "--out", "notes.txt")
    code, _, err = cli(monkeypatch, capsys, *args, "--out", blocker)  # a file where a folder is expected
    one_line_error(code, err, "--out", "is a file")
    assert blocker.read_text() == "x"


def test_unwritable_output_fails_before_generating(monkeypatch, capsys, hrv_dir, no_model):
    code, _, err = cli(monkeypatch, capsys, *DEVICE_COMMANDS["maps"], "--out", "/proc/headlens-nope")
    one_line_error(code, err, "--out", "/proc/headlens-nope")
    for command in ("build", "weaken", "generate"):  # a dry run checks the folder the real run would write, too
        args = [a.format(hrv=hrv_dir) for a in DEVICE_COMMANDS[command]]
        code, _, err = cli(monkeypatch, capsys, *args, "--dry-run", "--out", "/proc/headlens-nope/run")
        one_line_error(code, err, "--out", "/proc/headlens-nope/run")


def test_report_out_must_be_html(monkeypatch, capsys, tmp_path, hrv_dir):
    code, _, err = cli(monkeypatch, capsys, "report", hrv_dir, "--out", tmp_path / "report.png")
    one_line_error(code, err, "--out", ".html")
    assert not (tmp_path / "report.png").exists()
    (tmp_path / "dir.html").mkdir()
    code, _, err = cli(monkeypatch, capsys, "report", hrv_dir, "--out", tmp_path / "dir.html")
    one_line_error(code, err, "--out", "is a folder")


def test_world_compare_markdown_is_checked_first(monkeypatch, capsys, tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    report = "joint=" + str(Path(__file__).parents[1] / "docs" / "world-report-joint")
    for bad, needle in ((blocker / "cmp.md", "is a file, not a folder"), (tmp_path / "cmp", ".md"),
                        ("/proc/headlens-nope/cmp.md", "/proc")):
        code, _, err = cli(monkeypatch, capsys, "world", "compare", report, "--markdown", bad)
        one_line_error(code, err, "--markdown", needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_report_out_under_a_file_names_the_file(monkeypatch, capsys, tmp_path, hrv_dir):
    (tmp_path / "notes.txt").write_text("x")
    code, _, err = cli(monkeypatch, capsys, "report", hrv_dir, "--out", tmp_path / "notes.txt" / "r.html")
    one_line_error(code, err, "--out", f"{str(tmp_path / 'notes.txt')!r} is a file, not a folder")


@pytest.mark.parametrize("args, needles", [
    (["edit", "--source", "a red car", "--target", "a blue car", "--local-blend", "zebra"], ("--local-blend", "zebra")),
    (["edit", "--source", "a red car", "--target", "a blue car", "-c", "Color", "--hrv", "{hrv}", "--word", "green"],
     ("'green'", "a blue car")),
    (["excite", "a cat and a dog", "-t", "cat:Color", "-t", "zebra:Color"], ("'zebra'", "a cat and a dog")),
    (["excite", "a cat and a dog", "-t", "cat", "-t", "dog", "--resolution", "3"],
     ("--resolution 3", "give --resolution as one of those")),
    (["validate", "-c", "Color", "--hrv", "{hrv}", "--heads", "top:x"], ("bad --heads 'top:x'", "top:N")),
    (["maps", "a red car", "-w", "car", "--heads", "99"], ("bad --heads '99'", "out of range")),
])
def test_words_are_checked_before_anything_is_generated(monkeypatch, capsys, tmp_path, hrv_dir, args, needles):
    """Words the run needs (--local-blend, --word, --token) are resolved after the model loads but before any image
    or file: the run fails in one line and leaves no folder."""
    out = tmp_path / "new" / "run"
    args = [a.format(hrv=hrv_dir) for a in args]
    code, _, err = cli(monkeypatch, capsys, *args, "-m", "tiny", "-n", "1", "-s", "1", "--out", out)
    line = one_line_error(code, err, *needles)
    assert "local_blend" not in line and "layers='all'" not in line
    assert not (tmp_path / "new").exists()


def test_failed_run_leaves_no_empty_output_folder(monkeypatch, capsys, tmp_path, hrv_dir):
    new = tmp_path / "a" / "b" / "run"
    code, _, err = cli(monkeypatch, capsys, "generate", "a red car", "-a", "purple:Color:Plants", "--hrv", hrv_dir,
                       "-m", "tiny", "-n", "1", "-s", "1", "--out", new)  # fails after the model loaded
    one_line_error(code, err, "purple")
    assert not (tmp_path / "a").exists()  # every folder the run created is gone
    kept = tmp_path / "kept"
    kept.mkdir()
    code, _, err = cli(monkeypatch, capsys, "generate", "a red car", "-a", "purple:Color:Plants", "--hrv", hrv_dir,
                       "-m", "tiny", "-n", "1", "-s", "1", "--out", kept)
    assert code == 2 and kept.is_dir()  # a folder the user had stays


# ---------------------------------------------------------------------------------------------- 2. --version
def test_version():
    p = subprocess.run([sys.executable, "-m", "headlens", "--version"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"headlens {headlens.__version__}"


# ---------------------------------------------------------------------------------------------- 3. CLI words
@pytest.mark.parametrize("args, flag, also, python_name", [
    (["weaken", "-c", "Color", "--hrv", "{hrv}", "--max-prompts", "-3"], "--max-prompts", "≥ 1", "max_prompts"),
    (["validate", "-c", "Color", "--hrv", "{hrv}", "--max-prompts", "0"], "--max-prompts", "≥ 1", "max_prompts"),
    (["weaken", "-c", "Color", "--hrv", "{hrv}", "--steps", "0"], "--steps", "≥ 1", "num_inference_steps"),
    (["weaken", "-c", "Color", "--hrv", "{hrv}", "--random-draws", "-1"], "--random-draws", "≥ 0", "random_draws"),
    (["generate", "a red car", "--strengthen", "red:Color", "--hrv", "{hrv}", "--batch-size", "0"], "--batch-size",
     "≥ 1", "batch_size"),
    (["generate", "a red car", "--strengthen", "red:Color", "--hrv", "{hrv}", "--step-range", "0.5:0.2"],
     "--step-range", "0:0.5", "(0.0, 0.5)"),
    (["build", "--max-prompts", "0"], "--max-prompts", "≥ 1", "limit"),
    (["maps", "a red car", "-w", "car", "--steps", "0"], "--steps", "≥ 1", "num_inference_steps"),
])
def test_errors_name_the_flag_not_the_python_argument(monkeypatch, capsys, tmp_path, hrv_dir, no_model, args, flag,
                                                      also, python_name):
    args = [a.format(hrv=hrv_dir) for a in args]
    code, _, err = cli(monkeypatch, capsys, *args, "-m", "tiny", "--out", tmp_path / "o")
    line = one_line_error(code, err, flag, also)
    assert python_name not in line.replace(flag, "")


def test_replace_edit_of_other_length_says_edit_refine(monkeypatch, capsys, tmp_path):
    code, _, err = cli(monkeypatch, capsys, "edit", "--source", "a red car", "--target", "a big blue car", "-m", "tiny",
                       "-n", "1", "--out", tmp_path / "e")
    line = one_line_error(code, err, "--edit refine", "--source", "--target")
    assert "edit='refine'" not in line
    assert not (tmp_path / "e").exists()


# ---------------------------------------------------------------------------------------------- 4. one vocabulary
def _commands():
    import typer.main

    group = typer.main.get_command(app)
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            for sub, c in cmd.commands.items():
                yield f"{name} {sub}", c
        else:
            yield name, cmd


# What every short flag means, in every command that has it.
SHORT_FLAGS = {"-m": "--model", "-o": "--out", "-n": "--steps", "-g": "--guidance", "-b": "--batch-size",
               "-s": ("--seed", "--seeds"), "-c": "--concept", "-p": "--prompts", "-k": "--k", "-a": "--adjust",
               "-t": "--token", "-w": "--word", "-i": "--include"}


def test_a_short_flag_means_the_same_in_every_command():
    seen = {}
    for name, cmd in _commands():
        for p in cmd.params:
            shorts = [o for o in p.opts + p.secondary_opts if re.fullmatch(r"-[a-zA-Z]", o)]
            longs = [o for o in p.opts + p.secondary_opts if o.startswith("--")]
            for s in shorts:
                assert s in SHORT_FLAGS, (name, s, longs)
                want = SHORT_FLAGS[s]
                want = want if isinstance(want, tuple) else (want,)
                assert any(w in longs for w in want), (name, s, longs)
                seen.setdefault(s, set()).add(name)
    assert len(seen["-s"]) >= 6 and len(seen["-c"]) >= 6 and len(seen["-m"]) >= 8


def test_prompt_caps_have_one_meaning():
    """Visible `--max-prompts` is always `--limit` too (one cap per command); commands running a build and a
    weakening name each cap after its stage; the old names still work (hidden) and must agree."""
    for name, cmd in _commands():
        visible = [p for p in cmd.params if not getattr(p, "hidden", False)]
        for p in visible:
            names = set(p.opts + p.secondary_opts)
            if names & {"--max-prompts", "--limit"}:
                assert names >= {"--max-prompts", "--limit"}, (name, names)
        if name in ("demo", "reproduce"):
            longs = {o for p in visible for o in p.opts}
            assert {"--build-prompts", "--weaken-prompts"} <= longs, name
            assert not longs & {"--max-prompts", "--limit"}, name


def test_old_prompt_cap_names_still_work(monkeypatch, capsys, tmp_path, no_model):
    code, _, err = cli(monkeypatch, capsys, "reproduce", "-m", "tiny", "--build-prompts", "2", "--limit", "3",
                       "--out", tmp_path / "r")
    one_line_error(code, err, "--build-prompts 2", "--limit 3")
    code, _, err = cli(monkeypatch, capsys, "reproduce", "-m", "tiny", "--max-prompts", "0", "--out", tmp_path / "r")
    one_line_error(code, err, "--weaken-prompts must be ≥ 1")
    code, _, err = cli(monkeypatch, capsys, "demo", "--max-prompts", "0", "--out", tmp_path / "d")
    one_line_error(code, err, "--build-prompts must be ≥ 1")
    assert not (tmp_path / "r").exists() and not (tmp_path / "d").exists()


def test_negative_threads_is_a_one_line_error(monkeypatch, capsys, tmp_path, no_model):
    import torch

    before = torch.get_num_threads()
    for args in (("demo",), ("world", "report")):
        code, _, err = cli(monkeypatch, capsys, *args, "--threads", "-1", "--out", tmp_path / "t")
        one_line_error(code, err, "--threads must be ≥ 0 (got -1)")
    assert torch.get_num_threads() == before and not (tmp_path / "t").exists()


def test_hard_polysemy_guidance_below_one_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    code, _, err = cli(monkeypatch, capsys, "world", "report", "--poly-hard-guidance", "0.5", "--out", tmp_path / "w")
    one_line_error(code, err, "--poly-hard-guidance must be ≥ 1 (got 0.5)")
    assert not (tmp_path / "w").exists()


def test_concept_option_is_accepted_wherever_a_concept_is_taken():
    takes_concept = {"weaken", "validate", "edit", "maps", "demo", "show", "report"}
    for name, cmd in _commands():
        if name in takes_concept:
            assert any("--concept" in p.opts + p.secondary_opts for p in cmd.params), name


def test_concept_positional_and_option_agree(monkeypatch, capsys, tmp_path, hrv_dir, no_model):
    code, _, err = cli(monkeypatch, capsys, "weaken", "Color", "--concept", "Shape", "--hrv", hrv_dir, "-m", "tiny",
                       "--out", tmp_path / "w")
    one_line_error(code, err, "two concepts")
    code, _, err = cli(monkeypatch, capsys, "validate", "--hrv", hrv_dir, "-m", "tiny", "--out", tmp_path / "v")
    one_line_error(code, err, "--concept")


@pytest.mark.parametrize("command", ["generate", "weaken", "validate"])
def test_hrv_is_required_and_checked_before_the_model_loads(monkeypatch, capsys, tmp_path, no_model, command):
    base = [a for a in DEVICE_COMMANDS[command] if a not in ("--hrv", "{hrv}")]
    code, _, err = cli(monkeypatch, capsys, *base, "--out", tmp_path / "o")
    one_line_error(code, err, "missing option '--hrv'")
    code, _, err = cli(monkeypatch, capsys, *base, "--hrv", tmp_path / "nope", "--out", tmp_path / "o")
    one_line_error(code, err, "--hrv", "does not exist")
    assert not (tmp_path / "o").exists()
    help_text = help_of(command)
    lines = help_text.splitlines()
    i = next(i for i, ln in enumerate(lines) if "--hrv" in ln)
    assert re.search(r"\*\s+--hrv", lines[i]) and "required" in " ".join(lines[i:i + 3])


@pytest.mark.parametrize("args, needles", [
    (["maps", "a red car", "-w", "car", "-c", "Color"], ("--concept needs --hrv",)),
    (["edit", "--source", "a red car", "--target", "a blue car", "--hrv", "{hrv}"], ("--hrv needs --concept",)),
    (["excite", "a cat and a dog", "-t", "cat", "-t", "dog:Color", "--hrv", "{hrv}"], ("--token 'cat'", "WORD:CONCEPT")),
])
def test_what_an_hrv_needs_is_checked_before_the_model_loads(monkeypatch, capsys, tmp_path, hrv_dir, no_model, args,
                                                             needles):
    args = [a.format(hrv=hrv_dir) for a in args]
    code, _, err = cli(monkeypatch, capsys, *args, "-m", "tiny", "--out", tmp_path / "o")
    one_line_error(code, err, *needles)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, needles", [
    (["build", "--variant", "every"], ("unknown --variant 'every'", "reference")),
    (["build", "--concept-keys", "x"], ("unknown --concept-keys 'x'", "probes")),
    (["build", "--scheduler", "fast"], ("unknown --scheduler 'fast'", "ddim")),
    (["maps", "a red car", "-w", "car", "--map-size", "0"], ("--map-size must be ≥ 1",)),
    (["maps", "a red car", "-w", "car", "--occurrence", "-1"], ("--occurrence must be ≥ 0",)),
    (["generate", "a red car", "-a", "red:Color:Plants", "--hrv", "{hrv}", "--cases", "x.toml"],
     ("--cases", "--benchmark")),
    (["edit", "--source", "a red car", "--target", "a blue car", "--max-prompts", "2"], ("--max-prompts", "--benchmark")),
    (["excite", "a cat and a dog", "-t", "cat:Color", "--cases", "x.toml"], ("--cases", "--benchmark")),
])
def test_flags_are_checked_in_cli_words_before_the_model_loads(monkeypatch, capsys, tmp_path, hrv_dir, no_model, args,
                                                               needles):
    """Choices and flags that only apply with another flag: one line naming the flag, nothing loaded or written."""
    args = [a.format(hrv=hrv_dir) for a in args]
    code, _, err = cli(monkeypatch, capsys, *args, "-m", "tiny", "--out", tmp_path / "o")
    line = one_line_error(code, err, *needles)
    assert "concept_keys" not in line and "map size" not in line
    assert not (tmp_path / "o").exists()


def test_build_refuses_an_earlier_checkpoint_before_the_model_loads(monkeypatch, capsys, tmp_path, no_model):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "checkpoint.json").write_text("{}")
    code, _, err = cli(monkeypatch, capsys, "build", "-m", "tiny", "--out", tmp_path / "b")
    line = one_line_error(code, err, "--out", "add --resume")
    assert "resume=True" not in line


def test_maps_occurrence_that_does_not_exist_names_the_flag(monkeypatch, capsys, tmp_path):
    code, _, err = cli(monkeypatch, capsys, "maps", "a red car", "-w", "car", "--occurrence", "3", "-m", "tiny",
                       "--out", tmp_path / "m")
    one_line_error(code, err, "--occurrence 3 does not exist")
    assert not (tmp_path / "m").exists()


def help_of(name: str) -> str:
    """`headlens NAME --help` as a 200-column terminal shows it."""
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, [*name.split(), "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert res.exit_code == 0, (name, res.output)
    return res.output


def test_every_help_ends_with_copy_paste_examples():
    for name, _cmd in _commands():
        lines = [ln.strip() for ln in help_of(name).strip().splitlines() if ln.strip()]
        examples = [ln for ln in lines[-4:] if ln.startswith("headlens ")]
        assert examples and lines[-1].startswith("headlens "), (name, lines[-5:])
        assert "Examples:" in lines[-5:], name
        for ex in examples:  # each example is one line and uses this command
            assert f" {name.split()[-1]} " in f"{ex} ", (name, ex)


def test_commands_that_generate_many_images_have_dry_run():
    many = {"build", "generate", "weaken", "validate", "edit", "excite", "demo", "world report", "reproduce"}
    for name, cmd in _commands():
        if name in many:
            assert any("--dry-run" in p.opts for p in cmd.params), name


def test_weaken_dry_run_counts_generations_and_writes_nothing(monkeypatch, capsys, tmp_path, hrv_dir):
    out = tmp_path / "w"
    code, stdout, err = cli(monkeypatch, capsys, "weaken", "--concept", "Color", "--hrv", hrv_dir, "-m", "tiny",
                            "-n", "2", "--max-prompts", "2", "-s", "10,20", "--dry-run", "--out", out)
    assert code == 0, err
    # 22 heads, ks 0,1,11,21,22: k=0 and k=22 once; k=1,11,21 × (top, bottom, 3 random draws) → 17 head sets
    # × (2 prompts × 2 seeds) items = 68 images
    assert re.match(r"dry run: 68 generations .*about .* on this machine \(.* s per image, calibrated\)", last(stdout))
    assert not out.exists()


def test_build_dry_run(monkeypatch, capsys, tmp_path):
    code, stdout, err = cli(monkeypatch, capsys, "build", "-m", "tiny", "--max-prompts", "12", "-n", "3", "-b", "4",
                            "--dry-run", "--out", tmp_path / "b")
    assert code == 0, err
    assert last(stdout).startswith("dry run: 12 generations (12 prompts × 3 steps), about ")
    assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------------------------------------- 5. summaries
def test_weaken_prints_both_areas_and_a_verdict_that_uses_both(monkeypatch, capsys, tmp_path, hrv_dir):
    from headlens.analysis import figures
    from headlens.analysis.verdict import weakening_verdict

    titles = []
    real = figures.plot_curves
    monkeypatch.setattr("headlens.analysis.weakening.plot_curves",
                        lambda path, curves, title="", **kw: titles.append(title) or real(path, curves, title, **kw))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red car\na blue cup | blue\n")
    out = tmp_path / "w"
    code, stdout, err = cli(monkeypatch, capsys, "weaken", "Color", "-m", "tiny", "--hrv", hrv_dir, "-p", prompts,
                            "-s", "1,2", "--ks", "0,1,H", "-n", "1", "--random-draws", "2", "--bootstrap", "50",
                            "--scorer", "world", "--size", "32", "--out", out)
    assert code == 0, err
    s = json.loads((out / "summary.json").read_text())
    a, r = s["area"]["words"], s["area_vs_random"]["words"]
    lines = stdout.strip().splitlines()
    assert lines[-2] == (f"Color words: LeRHF − MoRHF {a['value']:+.2f} [{a['low']:.2f}, {a['high']:.2f}]; "
                         f"random − MoRHF {r['value']:+.2f} [{r['low']:.2f}, {r['high']:.2f}]")
    cis = {"words": {"area_lerhf_morhf": a, "area_random_morhf": r, "area_lerhf_random": s["area_lerhf_random"]["words"]}}
    assert lines[-1] == f"verdict (4 items): {weakening_verdict(cis)}" == f"verdict (4 items): {s['verdict']}"
    assert "warning: only 4 prompt×seed items" in err
    assert "LeRHF − MoRHF" in titles[0] and "random − MoRHF" in titles[0] and "verdict:" in titles[0]


def test_curves_legend_says_what_each_band_is(monkeypatch, tmp_path):
    """curves.png: MoRHF/LeRHF bands are the 95 % CI over items, the random band ±1 s.d. over the draws."""
    import matplotlib.pyplot as plt

    from headlens.analysis.figures import plot_curves
    from headlens.analysis.weakening import Curve

    ks = [0, 1, 4]
    mean = np.array([0.9, 0.6, 0.2])
    curves = [Curve("morhf", "words", ks, mean, mean - 0.1, mean + 0.1),
              Curve("lerhf", "words", ks, mean + 0.05, mean - 0.02, mean + 0.2),
              Curve("random", "words", ks, mean, mean - 0.3, mean + 0.3, spread=np.array([0.01, 0.02, 0.03]))]
    figs = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    plot_curves(tmp_path / "c.png", curves, "Color: title\nverdict: x", random_draws=3)
    ax = figs[0].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["MoRHF: top-k heads weakened (band: 95% CI)", "LeRHF: bottom-k heads weakened (band: 95% CI)",
                      "random k heads, mean of 3 draws (band: ±1 s.d. over draws)"]
    bands = [c for c in ax.collections]
    for band, (lo, hi) in zip(bands, [(mean - 0.1, mean + 0.1), (mean - 0.02, mean + 0.2),
                                      (mean - [0.01, 0.02, 0.03], mean + [0.01, 0.02, 0.03])]):
        ys = band.get_paths()[0].vertices[:, 1]
        assert np.isclose(ys.min(), lo.min()) and np.isclose(ys.max(), hi.max())
    assert ax.get_title(loc="left") == "Color: title\nverdict: x"
    monkeypatch.undo()
    plt.close("all")


def test_verdict_needs_the_random_control():
    from headlens.analysis.verdict import short_verdict, weakening_verdict

    def ci(lo, hi):
        return {"low": lo, "high": hi}

    # LeRHF − MoRHF clearly positive, but the top heads are no worse than random ones: not validated
    v = weakening_verdict({"words": {"area_lerhf_morhf": ci(0.19, 0.44), "area_random_morhf": ci(-0.13, 0.02),
                                     "area_lerhf_random": ci(0.2, 0.5)}})
    assert "validated" not in v.replace("(validated", "") and "partial" in v
    v = weakening_verdict({"words": {"area_lerhf_morhf": ci(0.1, 0.3), "area_random_morhf": ci(0.05, 0.2)}})
    assert v.endswith("(validated by weakening)")
    v = weakening_verdict({"words": {"area_lerhf_morhf": ci(-0.4, -0.1), "area_random_morhf": ci(-0.3, -0.1)}})
    assert "contradicted" in v and "LeRHF − MoRHF < 0" in v
    assert short_verdict({"words": {"area_lerhf_morhf": ci(0.1, 0.3)}}).startswith("top > bottom")
    v = weakening_verdict({"words": {"area_lerhf_morhf": ci(-0.1, 0.3), "area_random_morhf": ci(-0.1, 0.1),
                                     "area_lerhf_random": ci(-0.1, 0.1)}})
    assert v == "no difference from random heads at this n"


@pytest.mark.parametrize("report_json", SHIPPED_REPORTS, ids=lambda p: p.parent.name)
def test_world_report_verdicts_come_from_the_same_function(report_json):
    from headlens.analysis.verdict import weakening_verdict
    from headlens.validation.markdown import _verdicts

    r = json.loads(report_json.read_text())
    lines = _verdicts(r)
    for concept, c in r["weakening"]["concepts"].items():
        mine = [ln for ln in lines if ln.startswith(f"{concept} (n=")]
        if mine:
            assert mine[0].endswith(weakening_verdict(c["tokens"]))


# ---------------------------------------------------------------------------------------------- 6. defaults
def test_one_default_step_count_per_model():
    from headlens.cli.common import default_guidance, default_steps
    from headlens.world import GENERATION

    assert default_steps("world") == GENERATION["num_inference_steps"] and default_steps("some/sd-model") == 50
    assert default_guidance("world") == GENERATION["guidance_scale"] and default_guidance("tiny") == 7.5
    for name, cmd in _commands():
        for p in cmd.params:
            if "--steps" in p.opts and name not in ("world report", "reproduce"):  # those two fix the protocol's own
                assert p.default is None, (name, p.default)  # filled in per model, never a fixed number
                assert "default: the model's own" in p.help or "bundled model's own" in p.help, name
                if "default: the model's own" in p.help:  # the numbers it names are the ones used
                    assert (f"{GENERATION['num_inference_steps']} for the bundled world models, 50 otherwise"
                            in p.help), (name, p.help)
            if "--guidance" in p.opts and name not in ("world report", "reproduce"):
                assert p.default is None and (f"{GENERATION['guidance_scale']:g} for the bundled world models, 7.5 "
                                              "otherwise") in p.help, (name, p.help)


# ---------------------------------------------------------------------------------------------- 8. generate readings
def test_generate_reports_readings_per_seed(monkeypatch, capsys, tmp_path, hrv_dir):
    from headlens.analysis import readings

    class Reader:  # stands in for the world reader: reads the mean brightness as a word
        def score(self, image):
            v = float(np.asarray(image.convert("L")).mean())
            return {"Color": "bright" if v > 127 else "dark", "Shape": "blob"}

    real_init = readings.WorldReading.__init__
    monkeypatch.setattr(readings.WorldReading, "__init__",
                        lambda self, concepts=(), reader=None: real_init(self, concepts, Reader()))
    out = tmp_path / "g"
    code, stdout, err = cli(monkeypatch, capsys, "generate", "a red square", "-a", "red:Color:Shape", "--hrv", hrv_dir,
                            "-m", "tiny", "-n", "2", "-s", "1-3", "--scorer", "world", "--size", "32", "--out", out)
    assert code == 0, err
    run = json.loads((out / "run.json").read_text())
    rd = run["readings"]
    assert rd["seeds"] == [1, 2, 3] and len(rd["plain"]) == len(rd["steered"]) == 3
    from PIL import Image

    for i, s in enumerate([1, 2, 3]):  # readings are those of the saved images, computed again here
        for row in ("plain", "steered"):
            im = Image.open(out / row / f"seed{s}.png")
            assert rd[row][i] == {"Color": Reader().score(im)["Color"], "Shape": "blob"}
    n = sum(p != q for p, q in zip(rd["plain"], rd["steered"]))
    assert rd["changed_share"] == n / 3
    assert last(stdout) == f"reading changed in {n} of 3 seeds ({100 * n / 3:.0f} %)"
    assert sum(1 for ln in stdout.splitlines() if ln.startswith("  seed ")) == 3
    rows = (out / "readings.csv").read_text().strip().splitlines()
    assert rows[0].split(",")[:3] == ["seed", "row", "Color"] and len(rows) == 1 + 2 * 3
    assert run["model"] == "tiny"


def test_generate_without_a_reader_says_how_much_the_pixels_changed(monkeypatch, capsys, tmp_path, hrv_dir):
    """No scorer (tiny model, --scorer auto): the mean pixel change per seed, from the saved images, and a hint."""
    from PIL import Image

    out = tmp_path / "g"
    code, stdout, err = cli(monkeypatch, capsys, "generate", "a red car", "-a", "red:Color:Plants", "--hrv", hrv_dir,
                            "-m", "tiny", "-n", "2", "-s", "1,2", "--out", out)
    assert code == 0, err
    run = json.loads((out / "run.json").read_text())
    change = []
    for s in (1, 2):  # the slow way: every pixel and channel of the saved PNGs
        a = Image.open(out / "plain" / f"seed{s}.png").convert("RGB")
        b = Image.open(out / "steered" / f"seed{s}.png").convert("RGB")
        total = sum(abs(int(a.getpixel((x, y))[c]) - int(b.getpixel((x, y))[c]))
                    for x in range(a.width) for y in range(a.height) for c in range(3))
        change.append(total / (a.width * a.height * 3))
    assert run["pixel_change"]["seeds"] == [1, 2]
    assert run["pixel_change"]["mean_abs_255"] == pytest.approx(change, abs=1e-9)
    mean = sum(change) / 2
    lines = err.strip().splitlines()
    assert lines[-2] == (f"steered vs plain: pixels changed by {mean:.2f}/255 on average (seed 1: {change[0]:.2f}, "
                         f"seed 2: {change[1]:.2f})")
    assert "readings" not in run and "--scorer clip:MODEL" in lines[-1]
    assert stdout.strip() == str(out / "grid.png")  # stdout: the picture's path only, for scripts


# ---------------------------------------------------------------------------------------------- 6. README examples
def _readme_command(name: str, contains: str = "") -> list[str]:
    """The README's first `headlens NAME ...` example line that contains `contains`."""
    import shlex

    text = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    line = next(ln for ln in text.splitlines() if ln.startswith(f"headlens {name} ") and contains in ln)
    return shlex.split(line.split("  #")[0])[1:]


def test_readme_maps_example_draws_what_it_maps(monkeypatch, capsys, tmp_path):
    """The README's `maps` example at the default steps: the world reader sees the mapped word in the image."""
    from PIL import Image

    from headlens import world

    args = _readme_command("maps", contains="world-hrv")  # the bundled model's example (other families have theirs)
    hrv = tmp_path / "world-hrv"  # the README builds it with `headlens build --model world --out world-hrv`
    pipe = world.load_pipeline()
    heads = HeadIndex.from_unet(pipe.unet)
    HRV.from_matrix(torch.ones(len(world.VOCABULARY), len(heads)), heads, list(world.VOCABULARY)).save(hrv)
    args = [str(hrv) if a == "world-hrv" else a for a in args]
    args[args.index("--out") + 1] = str(tmp_path / "maps")
    code, stdout, err = cli(monkeypatch, capsys, *args)
    assert code == 0, err
    run = json.loads((tmp_path / "maps" / "run.json").read_text())
    assert run["num_inference_steps"] == world.GENERATION["num_inference_steps"]
    assert run["model"] == "world" and run["model_arg"] == "world"  # not the package's absolute path
    seen = world.Scorer().score(Image.open(tmp_path / "maps" / "image.png"))
    assert seen["Shape"] == run["word"], seen


# ---------------------------------------------------------------------------------------------- 7. report
@pytest.fixture(scope="module")
def analyses(tmp_path_factory, hrv_dir):
    """Weaken, validate and generate runs of the tiny HRV written beside its folder (as a user would)."""
    mp = pytest.MonkeyPatch()
    root = hrv_dir.parent
    prompts = root / "prompts.txt"
    prompts.write_text("a red car\na blue cup | blue\n")
    common = ["-m", "tiny", "--hrv", str(hrv_dir), "-n", "1", "--size", "32", "--scorer", "world"]
    runs = {
        "weaken": ["weaken", "-c", "Color", "-p", str(prompts), "-s", "1,2", "--ks", "0,1,H", "--random-draws", "1",
                   "--bootstrap", "50", "--out", str(root / "weaken-color"), *common],
        "validate": ["validate", "-c", "Color", "-p", str(prompts), "-s", "1", "--heads", "0-4", "--bootstrap", "50",
                     "--out", str(root / "validate-color"), *common],
        "generate": ["generate", "a red square", "-a", "red:Color:Shape", "-s", "1,2", "--out", str(root / "gen"),
                     *common],
    }
    logs = {}
    for name, args in runs.items():
        mp.setattr(sys, "argv", ["headlens", *args])
        code = run_app(app)
        assert code == 0, name
    other = root / "other-hrv-weaken"  # an analysis of another HRV: must not be picked up
    other.mkdir()
    (other / "summary.json").write_text(json.dumps({"analysis": "ordered_weakening", "hrv_id": "0" * 16}))
    mp.undo()
    return root, logs


def test_report_finds_sibling_analyses_and_shows_their_numbers(monkeypatch, capsys, analyses, hrv_dir):
    import html as html_mod

    root, _ = analyses
    out = root / "report.html"
    code, stdout, err = cli(monkeypatch, capsys, "report", hrv_dir, "--out", out)
    assert code == 0, err
    page = html_mod.unescape(out.read_text())
    s = json.loads((root / "weaken-color" / "summary.json").read_text())
    a, r = s["area"]["words"], s["area_vs_random"]["words"]
    assert "Ordered weakening — Color" in page
    assert f"{a['value']:+.2f} [{a['low']:.2f}, {a['high']:.2f}]" in page
    assert f"{r['value']:+.2f} [{r['low']:.2f}, {r['high']:.2f}]" in page and s["verdict"] in page
    e = json.loads((root / "validate-color" / "summary.json").read_text())
    assert "Causal head effects — Color" in page
    assert f"{e['spearman']:+.2f} [{e['spearman_ci'][0]:.2f}, {e['spearman_ci'][1]:.2f}]" in page
    assert f"permutation p {e['spearman_p']:.2f}" in page
    g = json.loads((root / "gen" / "run.json").read_text())["readings"]
    assert f"{sum(g['changed'])} of 2 seeds" in page
    assert "other-hrv-weaken" not in page
    assert '"area_vs_random"' not in page  # numbers, not raw summary.json dumps


# ---------------------------------------------------------------------------------------------- 9. pictures
def test_grids_have_gaps_and_a_font_with_arrows():
    import numpy as np
    from PIL import Image

    from headlens.analysis.figures import font, image_grid

    f = font(14)
    assert f.getname()[0] == "DejaVu Sans"
    assert f.getbbox("→")[2] > 4  # the arrow has a glyph of its own width
    black = Image.new("RGB", (16, 16), "black")
    g = np.asarray(image_grid([[black, black], [black, black]], ["a", "b"], ["x → y", "z"], cell=40, gap=6))
    dark = (g.sum(-1) == 0)
    cols = np.flatnonzero(dark.sum(0) >= 80)  # image pixels: dark all the way down both cells (text is not)
    rows = np.flatnonzero(dark.sum(1) >= 80)
    assert len(cols) == len(rows) == 80
    assert sorted(set(np.diff(cols))) == [1, 7] and sorted(set(np.diff(rows))) == [1, 7]  # one 6-px white gap


def test_edit_and_excite_grids_name_the_prompts(monkeypatch, capsys, tmp_path):
    from headlens.cli import apps_cmd

    calls = []
    real = apps_cmd.grid
    monkeypatch.setattr(apps_cmd, "grid", lambda rows, cols, labels, title="": calls.append((cols, title))
                        or real(rows, cols, labels, title))
    code, _, err = cli(monkeypatch, capsys, "edit", "--source", "a red car", "--target", "a blue car", "-m", "tiny",
                       "-n", "1", "-s", "1", "--out", tmp_path / "e")
    assert code == 0, err
    cols, title = calls[-1]
    assert title == "a red car → a blue car" and "a red car" in cols[0] and "a blue car" in cols[1]
    code, _, err = cli(monkeypatch, capsys, "excite", "a cat and a dog", "-t", "cat:Animals", "-t", "dog:Animals",
                       "-m", "tiny", "-n", "1", "-s", "1", "--max-iter", "1", "--out", tmp_path / "x")
    assert code == 0, err
    cols, title = calls[-1]
    assert title == "a cat and a dog" and "a cat and a dog" in cols[0] and "cat, dog" in cols[1]


def _texts_px(fig):
    return [t.get_fontsize() * fig.dpi / 72 for t in fig.findobj(lambda o: hasattr(o, "get_text")
                                                                   and hasattr(o, "get_fontsize") and o.get_text())]


def test_top_heads_picture_has_readable_cells_and_a_colour_scale(hrv_dir):
    from headlens import plots

    hrv = HRV.load(hrv_dir)
    fig = plots.plot_top_heads(hrv, k=6)
    ax = fig.axes[0]
    cells = [t for t in ax.texts]
    assert len(cells) == 3 * 6 and min(t.get_fontsize() * fig.dpi / 72 for t in cells) >= 10
    assert len(fig.axes) == 2 and "HRV" in fig.axes[1].get_ylabel()  # the colour bar


def test_bar_labels_do_not_overlap(hrv_dir):
    from headlens import plots

    heads = HRV.load(hrv_dir).heads
    crowded = torch.ones(2, len(heads))
    crowded[0, 3:8] = torch.tensor([3.0, 3.05, 3.1, 2.95, 3.02])  # five neighbours of about the same height
    crowded[1, 10:15] = torch.tensor([1.2, 2.9, 1.1, 3.0, 1.3])
    hrv = HRV.from_matrix(crowded, heads, ["Crowded", "Alternating"])
    for concept in hrv.concepts:
        fig = plots.plot_concept_bars(hrv, concept, top=5)
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        r = canvas.get_renderer()
        from matplotlib.text import Annotation

        boxes = [t.get_window_extent(r) for a in fig.axes for t in a.texts if isinstance(t, Annotation)]
        assert len(boxes) == 5
        for i in range(len(boxes)):
            for j in range(i):
                assert not boxes[i].overlaps(boxes[j]), concept


def test_timestep_axes_have_regular_ticks(tmp_path):
    from headlens import plots

    heads = HeadIndex.from_unet(tiny_unet())
    votes = torch.randint(0, 3, (21, len(heads), 2), generator=torch.Generator().manual_seed(0))
    hrv = HRV(heads, ["Color", "Shape"], votes)
    for fig in (plots.plot_timesteps(hrv, "Color"), plots.plot_timestep_summary(hrv)):
        checked = 0
        for ax in fig.axes:
            for label, ticks in ((ax.get_xlabel(), ax.get_xticks()), (ax.get_ylabel(), ax.get_yticks())):
                if label.startswith("step"):
                    steps = np.diff(ticks)
                    assert len(set(np.round(steps, 6))) == 1 and ticks[0] == 0 and ticks[-1] <= 20, (label, ticks)
                    checked += 1
        assert checked >= 1
    assert plots.step_ticks(21, 12) == list(range(0, 21, 2)) and plots.step_ticks(51) == list(range(0, 51, 10))


def test_maps_have_a_shared_scale_view_and_readable_colour_bars(tmp_path, hrv_dir):
    from headlens.maps import head_maps, plot_head_maps
    from headlens.testing import tiny_sd_pipeline

    pipe = tiny_sd_pipeline()
    result = head_maps(pipe, "a red car", "car", seed=0, num_inference_steps=2)
    hrv = HRV.load(hrv_dir)
    fig = plot_head_maps(result, hrv=hrv, concept="Color", k=3, scale="both")
    bars = [a for a in fig.axes if a.get_ylabel()]
    assert {a.get_ylabel() for a in bars} == {"min … max of each map",
                                              "attention probability on the word\n(mean over steps)"}
    for a in bars:
        assert a.yaxis.label.get_fontsize() >= 10 and all(t.get_fontsize() >= 9 for t in a.get_yticklabels())
    overlays = [im for a in fig.axes for im in a.get_images()[1:]]  # [0] is the generated image
    each, shared = overlays[: len(overlays) // 2], overlays[len(overlays) // 2:]
    assert all(im.get_clim() == (0, 1) for im in each)
    vmax = max(float(im.get_array().max()) for im in shared)
    assert all(im.get_clim() == (0, vmax) for im in shared) and vmax < 1  # raw attention, one scale
    strongest = float(result.upsampled(None).max()) / result.evaluations
    assert vmax <= strongest + 1e-6  # the mean over steps, not the sum


# ---------------------------------------------------------------------------------------------- 10. small
def test_validate_counts_heads_without_effect_and_warns_on_few_items(monkeypatch, capsys, tmp_path, hrv_dir):
    # the world reader finds nothing in the random tiny model's images: every score is 0, no head has an effect
    code, stdout, err = cli(monkeypatch, capsys, "validate", "-c", "Color", "--hrv", hrv_dir, "-m", "tiny", "-n", "1",
                            "--size", "32", "--scorer", "world", "--max-prompts", "1", "-s", "1", "--heads", "0-5",
                            "--bootstrap", "20", "--out", tmp_path / "v")
    assert code == 0, err
    effects = (tmp_path / "v" / "head_effects.csv").read_text().splitlines()[1:]
    zero = sum(1 for row in effects if float(row.split(",")[3]) == 0)
    assert zero == 6
    assert "6 of 6 heads had no measurable effect" in stdout
    assert "heads by causal effect" not in stdout + err  # no table of zero-effect heads in head order
    assert "warning: only 1 prompt×seed items" in err


def test_model_names_are_world_not_a_path():
    from headlens import world
    from headlens.building import model_name

    assert model_name(world.load_pipeline()) == "world"


def test_readme_picture_names_match_the_files_show_writes(hrv_dir, tmp_path):
    from headlens import plots

    text = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    text += (Path(__file__).parents[1] / "docs" / "plots.md").read_text(encoding="utf-8")
    names = re.findall(r"(bars|timesteps)/([A-Za-z_-]+)\.png", text)
    assert names
    heads = HRV.load(hrv_dir).heads
    votes = torch.randint(0, 3, (4, len(heads), 3), generator=torch.Generator().manual_seed(0))
    files = plots.save_all(HRV(heads, ["Color", "Shape", "Plants"], votes), tmp_path / "plots")
    written = {p.relative_to(tmp_path / "plots").as_posix() for paths in files.values() for p in paths}
    for folder, name in names:
        if name.lower() in ("color", "shape", "plants"):
            assert f"{folder}/{name}.png" in written, (folder, name)


def test_example_pictures_are_described_as_made():
    """README / docs/plots.md say the example pictures come from the default world model at its default steps with
    its head count (docs/images/make_examples.sh makes them so)."""
    from shipped_world import WORLD_HEADS

    from headlens.world import GENERATION

    root = Path(__file__).parents[1]
    for doc in (root / "README.md", root / "docs" / "plots.md"):
        text = doc.read_text(encoding="utf-8")
        assert f"at its default {GENERATION['num_inference_steps']} steps" in text, doc.name
        heads = re.findall(r"`?(?:heatmap\.png`?: |world model: 6 )concepts × (\d+) heads", text)
        assert heads and set(heads) == {str(WORLD_HEADS)}, (doc.name, heads)
    script = (root / "docs" / "images" / "make_examples.sh").read_text(encoding="utf-8")
    assert "--model world " in script and "--steps" not in script  # the default model at its default steps


@pytest.mark.parametrize("report_json", SHIPPED_REPORTS, ids=lambda p: p.parent.name)
def test_world_report_plan_matches_what_a_full_run_generated(report_json):
    """planned_generations (what `world report --dry-run` prints) equals the images the shipped report's run counted."""
    from headlens.validation import ReportConfig, planned_generations

    r = json.loads(report_json.read_text())
    cfg = ReportConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in r["config"].items()})
    plan = planned_generations(cfg, r["hrv"]["num_heads"])
    assert plan["hrv"] == r["hrv"]["images"]
    assert plan["weakening"] == sum(c["images"] for c in r["weakening"]["concepts"].values())
    assert plan["effects"] == sum(c["images"] for c in r["effects"]["concepts"].values())
    for name in ("polysemy", "polysemy_hard", "p2p", "ae"):
        assert plan[name] == r[name]["images"], name


def test_world_report_dry_run(monkeypatch, capsys, tmp_path):
    code, stdout, err = cli(monkeypatch, capsys, "world", "report", "--quick", "--dry-run", "--out", tmp_path / "r")
    assert code == 0, err
    assert re.match(r"dry run: \d+ generations of 3 DDIM steps", last(stdout)) and "  weakening: " in stdout
    assert not (tmp_path / "r").exists()


def test_generate_with_clip_reads_the_concept_words(monkeypatch, capsys, tmp_path, hrv_dir):
    """`--scorer clip:DIR`: each image's reading is the HRV word (of the concepts steered) CLIP matches best."""
    from PIL import Image
    from test_scorers import tiny_clip

    from headlens.scorers import ClipScorer

    clip_dir = tmp_path / "clip"
    for part in tiny_clip():
        part.save_pretrained(clip_dir)
    out = tmp_path / "g"
    code, stdout, err = cli(monkeypatch, capsys, "generate", "a red square", "-a", "red:Color:Shape", "--hrv", hrv_dir,
                            "-m", "tiny", "-n", "1", "-s", "1,2", "--scorer", f"clip:{clip_dir}", "--out", out)
    assert code == 0, err
    rd = json.loads((out / "run.json").read_text())["readings"]
    clip = ClipScorer(str(clip_dir))
    labels = [("Color", "red"), ("Color", "blue"), ("Shape", "square")]  # the HRV words of Color and Shape
    for i, s in enumerate([1, 2]):
        for row in ("plain", "steered"):
            sims = clip.matrix([Image.open(out / row / f"seed{s}.png")], [f"a photo of {w}" for _, w in labels])[0]
            c, w = labels[int(sims.argmax())]
            assert rd[row][i] == {"concept": c, "word": w}
    n = sum(p != q for p, q in zip(rd["plain"], rd["steered"]))
    assert last(stdout) == f"reading changed in {n} of 2 seeds ({100 * n / 2:.0f} %)"


@pytest.mark.parametrize("args, count", [
    (["generate", "a red car", "-a", "red:Color:Plants", "--hrv", "{hrv}", "-s", "1-3"], "6 generations"),  # 3 × 2
    (["edit", "--source", "a red car", "--target", "a blue car", "-s", "1,2"], "4 images"),  # 2 seeds × pair
    (["edit", "--source", "a red car", "--target", "a blue car", "-c", "Color", "--hrv", "{hrv}", "-s", "1,2"],
     "8 images"),  # + the P2P-HRV pair
    (["excite", "a cat and a dog", "-t", "cat:Color", "-t", "dog:Color", "--hrv", "{hrv}", "-s", "1"], "3 images"),
    (["validate", "-c", "Color", "--hrv", "{hrv}", "--heads", "0-3", "--max-prompts", "2", "-s", "1"],
     "10 generations"),  # (4 heads + 1) × 2 prompts
])
def test_dry_runs_count_and_write_nothing(monkeypatch, capsys, tmp_path, hrv_dir, args, count):
    args = [a.format(hrv=hrv_dir) for a in args]
    code, stdout, err = cli(monkeypatch, capsys, *args, "-m", "tiny", "-n", "2", "--dry-run", "--out", tmp_path / "o")
    assert code == 0, err
    assert last(stdout).startswith(f"dry run: {count}") and "calibrated" in last(stdout)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------- 6. documented lines
def _documented_lines(text: str) -> list[str]:
    """`headlens ...` lines of the fenced code blocks (continuations joined, `&&` chains split, comments cut)."""
    lines, in_code, buf = [], False, ""
    for ln in text.splitlines():
        if ln.startswith("```"):
            in_code, buf = not in_code, ""
            continue
        s = (buf + " " + ln.strip()).strip() if buf else ln.strip()
        buf = ""
        if not in_code:
            continue
        s = s.removeprefix("$ ").split("  #")[0].rstrip()
        if s.endswith("\\"):
            buf = s[:-1]
            continue
        lines += [part.strip() for part in s.split("&&") if part.strip().startswith("headlens ")]
    return lines


def _parse(line: str) -> None:
    """Parse a command line as `headlens` would, without running it (flags, arguments, required options)."""
    import shlex

    import typer.main

    args = shlex.split(line)[1:]
    cmd = typer.main.get_command(app).commands[args[0]]
    rest = args[1:]
    if hasattr(cmd, "commands"):
        cmd, rest = cmd.commands[rest[0]], rest[1:]
    cmd.make_context(args[0], list(rest))


def test_every_documented_command_line_parses():
    """Each `headlens ...` line of the README, docs/*.md and every --help's examples names real flags and
    gives every required option (a renamed flag or a missing --hrv in an example fails here)."""
    root = Path(__file__).parents[1]
    lines = []
    for f in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        lines += [(f.name, ln) for ln in _documented_lines(f.read_text(encoding="utf-8"))]
    for name, cmd in _commands():
        lines += [(f"{name} --help", part.strip()) for ln in (cmd.epilog or "").splitlines()
                  for part in ln.split("&&") if part.strip().startswith("headlens ")]
    assert len(lines) > 60
    for where, line in lines:
        try:
            _parse(line)
        except Exception as e:  # click's usage errors
            raise AssertionError(f"{where}: {line}: {e}") from None
