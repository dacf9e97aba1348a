"""The project's own tiny checkpoint suites: OLMoE and OLMo pre-trained in miniature on relational facts.

``SuiteSpec`` and ``suite_dir`` import nothing heavy; ``build_suite`` (torch, transformers) is imported on
first use, so the run configuration can embed :class:`SuiteSpec` cheaply.

Example:
    >>> from gated_lpi_exp.suites import SuiteSpec, build_suite
    >>> root = build_suite(SuiteSpec(name="micro_moe", family="olmoe", size="micro"))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gated_lpi_exp.suites.spec import PRESETS, SuiteSpec, suite_dir

if TYPE_CHECKING:
    from gated_lpi_exp.suites.build import build_suite

__all__ = ["PRESETS", "SuiteSpec", "build_suite", "suite_dir"]


def __getattr__(name: str) -> Any:
    if name == "build_suite":
        from gated_lpi_exp.suites.build import build_suite

        return build_suite
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
