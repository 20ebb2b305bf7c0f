"""Analyses built on steering: ordered weakening (spec §6) and causal head ranking.

* :func:`ordered_weakening` — MoRHF / LeRHF / random-order weakening curves, with bootstrap CIs
  and the normalised area between curves;
* :func:`head_effects` — weaken each head alone, rank heads by causal effect, Spearman against
  the HRV ranking with a bootstrap CI;
* :mod:`headlens.analysis.stats` — bootstrap, Spearman and area helpers on plain arrays.
"""

from __future__ import annotations

from .common import (
    GenerationSettings,
    Item,
    TemplateFamily,
    load_templates,
    make_items,
    prompt_targets,
    template_family,
    world_family,
)
from .head_effects import HeadEffectsResult, estimate_cost, head_effects
from .stats import bootstrap_ci, mean_ci, normalised_area, spearman
from .weakening import (
    Area,
    Condition,
    Curve,
    WeakeningResult,
    default_ks,
    head_order,
    ordered_weakening,
    plan_conditions,
)

__all__ = [
    "Area",
    "Condition",
    "Curve",
    "GenerationSettings",
    "HeadEffectsResult",
    "Item",
    "TemplateFamily",
    "WeakeningResult",
    "bootstrap_ci",
    "default_ks",
    "estimate_cost",
    "head_effects",
    "head_order",
    "load_templates",
    "make_items",
    "mean_ci",
    "normalised_area",
    "ordered_weakening",
    "plan_conditions",
    "prompt_targets",
    "spearman",
    "template_family",
    "world_family",
]
