"""Shared test set-up: quiet libraries, one torch thread (tiny models run fastest so), tiny pipelines."""

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sd_pipe():
    """A tiny SD1-style pipeline (random weights, 16×16 images, 22 heads)."""
    from headlens.testing import tiny_sd_pipeline

    return tiny_sd_pipeline()


@pytest.fixture(scope="module")
def sdxl_pipe():
    """A tiny SDXL-style pipeline (two text encoders, 32 heads)."""
    from headlens.testing import tiny_sdxl_pipeline

    return tiny_sdxl_pipeline()


@pytest.fixture(scope="module")
def sd2_pipe():
    """A tiny SD2-style pipeline (linear projections, upcast attention)."""
    from headlens.testing import tiny_sd_pipeline

    return tiny_sd_pipeline(sd2=True)


@pytest.fixture(scope="module")
def tiny_pixart():
    """A tiny PixArt-α pipeline (T5 text with padding mask, 2 blocks × 4 heads, 256 px)."""
    from headlens.testing import tiny_pixart_pipeline

    return tiny_pixart_pipeline()


@pytest.fixture(scope="module")
def tiny_sd3():
    """A tiny SD3 pipeline (joint attention, CLIP + T5 text, 2 blocks × 4 heads, 16 px)."""
    from headlens.testing import tiny_sd3_pipeline

    return tiny_sd3_pipeline()


@pytest.fixture(scope="module")
def tiny_flux():
    """A tiny FLUX pipeline (2 double + 2 single blocks × 4 heads, RoPE, no CFG batch, 16 px)."""
    from headlens.testing import tiny_flux_pipeline

    return tiny_flux_pipeline()


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A folder with a tiny random CLIP (model, tokenizer, image processor) for --scorer / --clip."""
    from test_scorers import tiny_clip

    d = tmp_path_factory.mktemp("clip")
    for part in tiny_clip():
        part.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): much faster than two
    on a shared 2-core machine; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
