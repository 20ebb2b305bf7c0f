"""Ordered weakening and causal head effects run unchanged on the diffusion transformers."""

import numpy as np
import pytest
import torch
from PIL import Image

from headlens import HRV
from headlens.analysis import head_effects, ordered_weakening
from headlens.analysis.common import GenerationSettings
from headlens.heads import HeadIndex
from headlens.scorers import FunctionScorer
from headlens.steering import steer

SETTINGS = GenerationSettings(num_inference_steps=2, batch_size=2, guidance_scale=4.0)


def redness(image: Image.Image, target, prompt) -> float:
    a = np.asarray(image, dtype=np.float64) / 255
    return float((a[..., 0] - a[..., 1:].mean(-1)).mean())


SCORER = FunctionScorer(redness, "redness")


def random_hrv(pipe):
    heads = HeadIndex.from_model(pipe)
    g = torch.Generator().manual_seed(0)
    m = torch.randperm(2 * len(heads), generator=g).float().view(2, -1) / len(heads)
    return HRV.from_matrix(m, heads, ["Color", "Plants"], words={"Color": ["red", "blue"]})


@pytest.mark.parametrize("family", ["tiny_pixart", "tiny_sd3", "tiny_flux"])
def test_head_effects_equal_direct_generation(family, request, tmp_path):
    pipe = request.getfixturevalue(family)
    hrv = random_hrv(pipe)
    prompts, chosen = ["a red car", "a blue cup"], [0, 5]
    r = head_effects(pipe, hrv, "Color", prompts, [3], chosen, SCORER, tmp_path, settings=SETTINGS, n_boot=50,
                     progress=False)

    def scores(head=None):
        gens = [torch.Generator().manual_seed(3) for _ in prompts]
        kw = dict(num_inference_steps=2, guidance_scale=4.0, generator=gens)
        if head is None:
            ims = pipe(prompts, **kw).images
        else:
            with steer(pipe) as s:
                s.weaken(heads=[head], words="all")
                ims = pipe(prompts, **kw).images
        return np.array([redness(im, None, None) for im in ims])

    base = scores()
    np.testing.assert_allclose(r.baseline, base, rtol=1e-6)
    np.testing.assert_allclose(r.effects, [(base - scores(h)).mean() for h in chosen], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("family", ["tiny_sd3", "tiny_pixart"])
def test_ordered_weakening_runs(family, request, tmp_path):
    pipe = request.getfixturevalue(family)
    hrv = random_hrv(pipe)
    n = len(hrv.heads)
    r = ordered_weakening(pipe, hrv, "Color", ["a red car", "a blue vase"], [1], [0, 2, n], SCORER, tmp_path,
                          settings=SETTINGS, random_draws=1, n_boot=50, progress=False)
    mor, ler = r.curve("morhf"), r.curve("lerhf")
    assert mor.mean[0] == ler.mean[0] and mor.mean[-1] == ler.mean[-1]  # k = 0 and k = H are shared
    assert not np.allclose(mor.mean, mor.mean[0])  # weakening changes the images
    assert (tmp_path / "curves.png").stat().st_size > 1000


@pytest.mark.parametrize("family", ["tiny_pixart", "tiny_flux"])
def test_shards_merge_and_resume_give_the_full_counts(family, request, tmp_path):
    import headlens
    from headlens.distributed import merge_runs

    pipe = request.getfixturevalue(family)
    concepts = {"Color": ["red", "blue"], "Shape": ["circle", "square"]}
    prompts = ["a red circle", "a blue square", "a green cup", "a cat"]
    kw = dict(num_inference_steps=2, batch_size=1, seed=4)
    full = headlens.build(pipe, concepts, prompts, **kw)
    for i in range(2):
        headlens.build(pipe, concepts, prompts, shard=f"{i}/2", out=tmp_path / f"p{i}", **kw)
    merged, _ = merge_runs([tmp_path / "p0", tmp_path / "p1"], tmp_path / "m")
    assert torch.equal(merged.votes, full.votes)
    # a run that stopped after shard 0's batches resumes to exactly the uninterrupted counts
    resumed = headlens.build(pipe, concepts, prompts, out=tmp_path / "p0", resume=True, **kw)
    assert torch.equal(resumed.votes, full.votes)
