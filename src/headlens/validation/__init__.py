"""Validation reports: the bundled world model's HRVs checked against ground truth (`headlens world report`)."""

from .world_report import (
    CONCEPTS,
    REPORT_SECTIONS,
    ReportConfig,
    SoftWorldScorer,
    attribute_prompts,
    build_hrvs,
    check_sections,
    edit_pairs,
    planned_generations,
    polysemy_prompts,
    random_init_control,
    render_from_json,
    run_report,
    two_object_prompts,
)

__all__ = [
    "CONCEPTS",
    "REPORT_SECTIONS",
    "ReportConfig",
    "SoftWorldScorer",
    "attribute_prompts",
    "build_hrvs",
    "check_sections",
    "edit_pairs",
    "planned_generations",
    "polysemy_prompts",
    "random_init_control",
    "render_from_json",
    "run_report",
    "two_object_prompts",
]
