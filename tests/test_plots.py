"""`headlens show` pictures: files exist and carry the data, labels stay readable at 22 and 1300 heads,
similarity and clustering equal independent computations."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from cli_inprocess import cli_code as cli
from PIL import Image

from headlens import HRV, plots
from headlens.heads import HeadIndex

CONCEPTS = {"Color": ["red", "blue", "green"], "Animals": ["cat", "dog"], "Plants": ["rose", "oak tree"]}
PROMPTS = ["a red cat", "a blue rose", "a dog under an oak tree"]


def sdxl_layout() -> HeadIndex:
    """SDXL's 70 cross-attention layers / 1300 heads (10 or 20 heads per layer), built from a description."""
    layers: list[dict] = []

    def add(place, block, attentions, depth, heads, downsample):
        for a in range(attentions):
            for t in range(depth):
                layers.append({"name": f"{block}.attentions.{a}.transformer_blocks.{t}.attn2", "place": place,
                               "place_layer": sum(1 for x in layers if x["place"] == place), "heads": heads,
                               "head_dim": 64, "downsample": downsample})

    add("down", "down_blocks.1", 2, 2, 10, 2)
    add("down", "down_blocks.2", 2, 10, 20, 4)
    add("mid", "mid_block", 1, 10, 20, 4)
    add("up", "up_blocks.0", 3, 10, 20, 4)
    add("up", "up_blocks.1", 3, 2, 10, 2)
    return HeadIndex.from_description(layers)


def random_hrv(heads: HeadIndex, concepts: list[str], timesteps: int = 3, seed: int = 0, metadata=None) -> HRV:
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(len(heads), len(concepts), generator=g) ** 4
    votes = torch.zeros(timesteps, len(heads), len(concepts), dtype=torch.int64)
    for t in range(timesteps):
        for _ in range(3):
            votes[t, torch.arange(len(heads)), torch.multinomial(weights, 1, generator=g)[:, 0]] += 1
    return HRV(heads, concepts, votes, metadata=dict(metadata or {"model": "synthetic"}))


@pytest.fixture(scope="module")
def tiny_hrv(tmp_path_factory, sd_pipe):
    import headlens

    hrv = headlens.build(sd_pipe, CONCEPTS, PROMPTS, num_inference_steps=3, batch_size=3)
    hrv.metadata["model"] = "tiny-sd"
    return hrv


@pytest.fixture(scope="module")
def tiny_dir(tiny_hrv, tmp_path_factory):
    return tiny_hrv.save(tmp_path_factory.mktemp("hrvdir") / "hrv")


@pytest.fixture(scope="module")
def xl_hrv():
    return random_hrv(sdxl_layout(), ["Color", "Animals", "Plants", "Material"], metadata={
        "model": "synthetic-sdxl", "height": 1024, "width": 1024, "vae_scale_factor": 8})


def png_pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def assert_real_picture(path, min_w=300, min_h=150) -> np.ndarray:
    px = png_pixels(path)
    h, w = px.shape[:2]
    assert w >= min_w and h >= min_h, (path, w, h)
    assert px.std() > 10, f"{path} is (nearly) blank"
    assert len(np.unique(px.reshape(-1, 3), axis=0)) > 20, f"{path} has too few colours"
    return px


def tick_boxes_overlap(fig, ax) -> list[tuple[str, str]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    boxes = [(t.get_text(), t.get_window_extent(r)) for t in labels]
    return [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2) if ba.overlaps(bb)]


# ---------------------------------------------------------------------------------------------- files
def test_save_all_tiny_writes_every_picture(tiny_hrv, tmp_path):
    files = plots.save_all(tiny_hrv, tmp_path, k=4)
    names = {p.relative_to(tmp_path).as_posix() for ps in files.values() for p in ps}
    expected = {"heatmap.png", "similarity.png", "similarity.csv", "top_heads.png", "top_heads.csv", "top_heads.md",
                "timesteps.png", "bars_sheet_01.png", "bars/color.png", "bars/animals.png", "bars/plants.png",
                "timesteps/color.png", "timesteps/animals.png", "timesteps/plants.png"}
    assert names == expected
    for n in expected:
        assert (tmp_path / n).is_file()
        if n.endswith(".png"):
            assert_real_picture(tmp_path / n)


def test_top_heads_files_match_the_hrv(tiny_hrv, tmp_path):
    plots.save_all(tiny_hrv, tmp_path, k=5)
    df = pd.read_csv(tmp_path / "top_heads.csv")
    assert len(df) == 3 * 5
    for c in CONCEPTS:
        rows = df[df.concept == c].sort_values("rank")
        want = tiny_hrv.top_heads(c, 5)
        assert list(rows["name"]) == [n for n, _ in want]
        np.testing.assert_allclose(rows["hrv"], [v for _, v in want], atol=1e-4)
        assert list(rows["head"]) == [tiny_hrv.heads[i].short_name for i in tiny_hrv.ranking(c)[:5]]
    md = (tmp_path / "top_heads.md").read_text()
    first = tiny_hrv.heads[tiny_hrv.ranking("Animals")[0]].short_name
    line = next(line for line in md.splitlines() if line.startswith("| Animals |"))
    assert line.split("|")[2].strip().startswith(first)
    sim = pd.read_csv(tmp_path / "similarity.csv", index_col=0)
    np.testing.assert_allclose(sim.values, np.corrcoef(tiny_hrv.matrix.numpy()), atol=1e-3)


def test_heatmap_shows_the_matrix_and_layer_labels(tiny_hrv):
    fig = plots.plot_heatmap(tiny_hrv, ["Plants", "Color"])
    ax = fig.axes[0]
    shown = np.asarray(ax.images[0].get_array())
    np.testing.assert_allclose(shown, tiny_hrv.matrix.numpy()[[2, 0]], rtol=1e-6)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Plants", "Color"]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == [plots.layer_label(layer) for layer in tiny_hrv.heads.layers]
    assert "tiny-sd" in fig.get_suptitle()
    assert fig.axes[-1].get_ylabel().startswith("HRV")  # colour bar
    assert not tick_boxes_overlap(fig, ax)


def test_1300_heads_stay_readable(xl_hrv, tmp_path):
    n = len(xl_hrv.heads)
    assert n == 1300 and len(xl_hrv.heads.layers) == 70
    fig = plots.plot_heatmap(xl_hrv)
    w_in, h_in = fig.get_size_inches()
    assert w_in <= 22.5 and h_in <= 6
    ax = fig.axes[0]
    ax_px = ax.get_position().width * w_in * fig.dpi
    assert ax_px >= 1.4 * n, "fewer than ~1.5 pixels per head"
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert 10 <= len(labels) <= 70 and not any(".h" in t for t in labels), "label layers, not heads"
    assert not tick_boxes_overlap(fig, ax)
    path = plots.save_figure(fig, tmp_path / "heat.png")
    px = assert_real_picture(path, min_w=1300)
    assert px.shape[1] <= 3400 and px.shape[0] <= 1000
    files = plots.save_all(xl_hrv, tmp_path / "all", k=5, concepts=["Color", "Plants"])
    for p in [p for ps in files.values() for p in ps if p.suffix == ".png"]:
        px = assert_real_picture(p)
        assert px.shape[1] <= 3400 and px.shape[0] <= 2400, (p, px.shape)
    fig = plots.plot_concept_bars(xl_hrv, "Color")
    assert not tick_boxes_overlap(fig, fig.axes[0])


def test_resolution_labels():
    heads = sdxl_layout()
    assert plots.latent_size_from_metadata({"height": 1024, "width": 768, "vae_scale_factor": 8}) == (128, 96)
    assert plots.latent_size_from_metadata({"height": 32, "width": 32}) is None  # VAE factor unknown: no guess
    assert plots.latent_size_from_metadata({"latent_size": 64}) == (64, 64)
    assert plots.latent_size_from_metadata({"height": None}) is None
    spans = plots.resolution_spans(heads, (128, 128))
    assert [(s.label, s.stop - s.start) for s in spans] == [
        ("64×64", 40), ("32×32", 400), ("32×32", 200), ("32×32", 600), ("64×64", 60)]
    assert [s.label for s in plots.resolution_spans(heads)] == ["/2", "/4", "/4", "/4", "/2"]
    assert [(s.label, s.start, s.stop) for s in plots.place_spans(heads)] == [
        ("down", 0, 440), ("mid", 440, 640), ("up", 640, 1300)]
    fig = plots.plot_heatmap(random_hrv(heads, ["A", "B"], metadata={"latent_size": [128, 128]}))
    texts = {t.get_text() for t in fig.axes[1].texts}  # the band above the heatmap
    assert {"64×64", "32×32", "down (440 heads)", "mid (200 heads)", "up (660 heads)"} <= texts


# ---------------------------------------------------------------------------------------------- maths
def test_similarity_equals_numpy():
    rng = np.random.default_rng(0)
    m = rng.random((6, 40)) * 3
    np.testing.assert_allclose(plots.concept_similarity(m, "pearson"), np.corrcoef(m), atol=1e-12)
    unit = m / np.linalg.norm(m, axis=1, keepdims=True)
    np.testing.assert_allclose(plots.concept_similarity(m, "cosine"), unit @ unit.T, atol=1e-12)
    m[2] = 1.0  # a constant row (a concept that never won a vote): no correlation, no NaN
    s = plots.concept_similarity(m, "pearson")
    assert np.isfinite(s).all() and s[2, 2] == 1 and not s[2, [0, 1, 3]].any()
    with pytest.raises(ValueError, match="spearman"):
        plots.concept_similarity(m, "spearman")


def naive_upgma(d: np.ndarray):
    """Average linkage the slow way: cluster distance = mean of all member-pair distances."""
    clusters = {i: [i] for i in range(len(d))}
    merges, nxt = [], len(d)
    while len(clusters) > 1:
        best = None
        for a, b in itertools.combinations(sorted(clusters), 2):
            dist = np.mean([d[i, j] for i in clusters[a] for j in clusters[b]])
            if best is None or dist < best[0] - 1e-12:
                best = (dist, a, b)
        dist, a, b = best
        merges.append((frozenset(clusters[a] + clusters[b]), dist))
        clusters[nxt] = clusters.pop(a) + clusters.pop(b)
        nxt += 1
    return merges


def test_average_linkage_equals_naive_upgma():
    rng = np.random.default_rng(3)
    for n in (2, 5, 9):
        x = rng.normal(size=(n, 3))
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        Z, order = plots.average_linkage(d)
        assert Z.shape == (n - 1, 4) and sorted(order) == list(range(n))
        members = {i: {i} for i in range(n)}
        for k, (a, b, _dist, size) in enumerate(Z):
            members[n + k] = members[int(a)] | members[int(b)]
            assert size == len(members[n + k])
        got = [(frozenset(members[n + k]), Z[k, 2]) for k in range(n - 1)]
        want = naive_upgma(d)
        assert [g[0] for g in got] == [w[0] for w in want]
        np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], atol=1e-12)
        assert np.all(np.diff(Z[:, 2]) >= -1e-12)  # UPGMA heights never decrease


def test_clustered_order_keeps_groups_together():
    rng = np.random.default_rng(1)
    base = rng.random((3, 50)) * 4
    rows, group = [], []
    for i in [0, 1, 2, 0, 1, 2, 0, 1]:  # interleaved on purpose
        rows.append(base[i] + rng.normal(scale=0.05, size=50))
        group.append(i)
    sim = plots.concept_similarity(np.array(rows), "pearson")
    _, order = plots.average_linkage(1 - sim)
    seq = [group[i] for i in order]
    runs = [k for k, _ in itertools.groupby(seq)]
    assert len(runs) == 3, seq


def test_timestep_agreement_is_pearson_per_step(xl_hrv):
    agree = plots.timestep_agreement(xl_hrv)
    pt, m = xl_hrv.per_timestep.numpy(), xl_hrv.matrix.numpy()
    assert agree.shape == (4, 3)
    for c in range(4):
        for t in range(3):
            assert agree[c, t] == pytest.approx(np.corrcoef(pt[t, c], m[c])[0, 1], abs=1e-9)
    same = HRV(xl_hrv.heads, xl_hrv.concepts, xl_hrv.votes[:1].repeat(4, 1, 1))
    np.testing.assert_allclose(plots.timestep_agreement(same), 1.0, atol=1e-9)


def test_matrix_only_hrv_skips_timesteps(tmp_path):
    heads = sdxl_layout()
    hrv = HRV.from_matrix(torch.rand(3, len(heads)) * 2, heads, ["A", "B", "C"])
    files = plots.save_all(hrv, tmp_path, k=3)
    assert "timesteps" not in files and (tmp_path / "heatmap.png").is_file()
    with pytest.raises(ValueError, match="per-timestep"):
        plots.plot_timesteps(hrv, "A")


# ---------------------------------------------------------------------------------------------- CLI
def test_show_cli(monkeypatch, tiny_dir, tmp_path, capsys):
    out = tmp_path / "pics"
    assert cli(monkeypatch, "show", tiny_dir, "--out", out, "--concepts", "color,Plants", "--k", "3",
               "--latent-size", "8", "--similarity", "cosine") == 0
    printed = capsys.readouterr().out
    assert "heatmap: heatmap.png" in printed
    assert {p.name for p in (out / "bars").iterdir()} == {"color.png", "plants.png"}
    assert len(pd.read_csv(out / "top_heads.csv")) == 6
    assert_real_picture(out / "heatmap.png")
    assert cli(monkeypatch, "show", tiny_dir) == 0  # default: HRV_DIR/plots
    assert (tiny_dir / "plots" / "similarity.png").is_file()


@pytest.mark.parametrize("args, needle", [
    (["show", "{missing}"], "does not exist"),
    (["show", "{empty}"], "not an HRV folder"),
    (["show", "{hrv}", "--concepts", "Colour"], "'Colour' not in this HRV"),
    (["show", "{hrv}", "--similarity", "spearman"], "spearman"),
    (["show", "{hrv}", "--latent-size", "big"], "--latent-size"),
    (["show", "{hrv}", "--k", "0"], "--k"),
])
def test_show_errors_are_one_line(monkeypatch, capsys, tmp_path, tiny_dir, args, needle):
    (tmp_path / "empty").mkdir()
    subs = {"{missing}": tmp_path / "nope", "{empty}": tmp_path / "empty", "{hrv}": tiny_dir}
    rc = cli(monkeypatch, *[subs.get(a, a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err


def test_similarity_labels_fit_in_the_figure(xl_hrv):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    names = ["Jewelry and accessories", "Seasons and holidays", "Sea creatures", "Age", "Geometric patterns"]
    hrv = random_hrv(xl_hrv.heads, names, seed=4)
    fig = plots.plot_similarity(hrv)
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    ax = fig.axes[0]
    W, H = fig.bbox.width, fig.bbox.height
    labels = ax.get_xticklabels() + ax.get_yticklabels()
    assert sorted(t.get_text() for t in ax.get_yticklabels()) == sorted(names)
    for t in labels:
        b = t.get_window_extent(r)
        assert b.x0 >= 0 and b.y0 >= 0 and b.x1 <= W and b.y1 <= H, (t.get_text(), b)
    assert not tick_boxes_overlap(fig, ax)


def sd14_layout() -> HeadIndex:
    """SD1.4's 16 cross-attention layers × 8 heads."""
    layers = [{"name": f"down_blocks.{i // 2}.attentions.{i % 2}.transformer_blocks.0.attn2", "place": "down",
               "place_layer": i, "heads": 8, "downsample": d} for i, d in enumerate([1, 1, 2, 2, 4, 4])]
    layers.append({"name": "mid_block.attentions.0.transformer_blocks.0.attn2", "place": "mid", "place_layer": 0,
                   "heads": 8, "downsample": 8})
    layers += [{"name": f"up_blocks.{1 + i // 3}.attentions.{i % 3}.transformer_blocks.0.attn2", "place": "up",
                "place_layer": i, "heads": 8, "downsample": d} for i, d in enumerate([4, 4, 4, 2, 2, 2, 1, 1, 1])]
    return HeadIndex.from_description(layers)


def test_128_heads_label_every_layer():
    names = [f"concept {i}" for i in range(34)]
    hrv = random_hrv(sd14_layout(), names, metadata={"model": "sd14", "latent_size": 64})
    fig = plots.plot_heatmap(hrv)
    w, h = fig.get_size_inches()
    assert 10 <= w <= 14 and 7 <= h <= 10
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"down{i}" for i in range(6)] + ["mid0"] + [
        f"up{i}" for i in range(9)]
    assert all(t.get_rotation() == 0 for t in ax.get_xticklabels())  # room to write them horizontally
    assert not tick_boxes_overlap(fig, ax)
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    texts = [t.get_text() for t in fig.axes[1].texts]
    assert texts.count("64×64") == 2 and texts.count("8×8") == 1


def test_model_names_in_titles_are_short():
    from headlens.world import model_path

    assert plots.display_model_name("CompVis/stable-diffusion-v1-4") == "CompVis/stable-diffusion-v1-4"
    assert plots.display_model_name("/data/models/sd15") == "models/sd15"
    assert plots.display_model_name(str(model_path())) == "headlens world model"
    assert plots.display_model_name(None) == "unknown model"
    hrv = random_hrv(sd14_layout(), ["A", "B"], metadata={"model": "/very/long/path/to/my-model"})
    assert "to/my-model (128 heads" in plots.plot_heatmap(hrv).get_suptitle()


def test_top_head_labels_do_not_collide():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    heads = sd14_layout()
    m = torch.ones(1, len(heads))
    m[0, 60:63] = torch.tensor([5.0, 4.9, 4.8])  # three neighbours on top, nearly equal
    hrv = HRV.from_matrix(m * len(heads) / m.sum(), heads, ["Color"])
    fig = plots.plot_concept_bars(hrv, "Color", top=3)
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    ax = fig.axes[0]
    notes = [t for t in ax.texts if t.get_text().startswith("up0.")]
    assert sorted(t.get_text() for t in notes) == sorted(heads[i].short_name for i in (60, 61, 62))
    boxes = [t.get_window_extent(r) for t in notes]
    assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
