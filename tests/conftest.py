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
