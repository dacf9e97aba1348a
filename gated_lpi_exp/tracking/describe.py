"""What a run is, as MLflow shows it: its params with every value resolved, one sentence describing it, and
where its examples came from.

A config field that means "use the default" (``0`` for a suite preset, ``null`` for a cache folder) is
logged as the value the run used, and a field the run does not use (the suite recipe of a hub model, the
head count of a neuron ablation) is left out, so two runs compare in the UI by what they did.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pandas as pd

from gated_lpi_exp.adapters import MOE_FAMILIES
from gated_lpi_exp.checkpoints.resolve import Resolution
from gated_lpi_exp.config import RunConfig
from gated_lpi_exp.data.relations import BUNDLED_DIR
from gated_lpi_exp.storage.arrays import default_cache_dir
from gated_lpi_exp.storage.results import result_root
from gated_lpi_exp.suites.spec import cache_root
from gated_lpi_exp.tracking.tracker import flatten

_MOE_ONLY = ("num_experts", "experts_per_token", "router_aux_loss_coef")


def resolved_params(cfg: RunConfig) -> dict[str, Any]:
    """The run's config as flat params, with defaults resolved and unused fields left out."""
    return flatten(resolved_config(cfg))


def resolved_config(cfg: RunConfig) -> dict[str, Any]:
    """The run's config as a nested dict (``config/resolved.yaml``), with defaults resolved and unused
    fields left out."""
    tree = asdict(cfg)
    model = tree["model"]
    if cfg.model.kind == "suite":
        suite = asdict(cfg.model.suite.resolved())
        suite["cache_dir"] = suite["cache_dir"] or str(cache_root())
        if cfg.model.family not in MOE_FAMILIES:
            for key in _MOE_ONLY:
                suite.pop(key)
        model["suite"] = suite
    else:
        model.pop("suite")
    tree["attribution"]["cache_dir"] = cfg.attribution.cache_dir or str(default_cache_dir())
    tree["execution"]["result_dir"] = str(result_root(cfg))
    ablation = tree["ablation"]
    if cfg.ablation.name == "none":
        tree["ablation"] = {"name": "none"}
    elif cfg.ablation.unit == "head":
        ablation.pop("fraction")
    else:
        ablation.pop("count")
    return tree


def relation_label(cfg: RunConfig) -> str:
    """The run's relation selection in a few words: ``all``, ``linguistic+factual`` or relation names."""
    rel = cfg.relations
    if rel.names:
        return "+".join(rel.names)
    if set(rel.categories) == {"linguistic", "commonsense", "factual", "bias"}:
        return "all"
    return "+".join(rel.categories)


def ablation_phrase(cfg: RunConfig) -> str:
    """``the top-10 heads zeroed against 3 random sets`` (or ``no ablation``)."""
    abl = cfg.ablation
    if abl.name == "none":
        return "no ablation"
    if abl.unit == "head":
        what = f"the top-{abl.count} head{'s' if abl.count != 1 else ''}"
    else:
        what = f"the top {abl.fraction * 100:g}% of FFN neurons"
    rank = "|importance|" if abl.rank_by == "abs" else "signed importance"
    control = f"against {abl.random_seeds} random set{'s' if abl.random_seeds != 1 else ''}"
    control = control if abl.random_seeds else "with no random control"
    heldout = ", ranked on a held-out half" if abl.heldout else ""
    return f"{what} by {rank} zeroed {control}{heldout}"


def run_description(cfg: RunConfig, series: Resolution, samples: pd.DataFrame) -> str:
    """One sentence: model, data, checkpoints, ablation (the run's ``mlflow.note.content``)."""
    steps = [c.step for c in series.checkpoints]
    kind = "MoE" if cfg.model.family in MOE_FAMILIES else "dense"
    span = f"steps {steps[0]:,}–{steps[-1]:,}" if len(steps) > 1 else f"step {steps[0]:,}"
    n_rel = samples["relation"].nunique()
    return (
        f"{cfg.model.name} ({kind}, {cfg.model.kind} {cfg.model.source}), {len(steps)} checkpoint"
        f"{'s' if len(steps) != 1 else ''} ({span}), on {len(samples)} examples of {n_rel} "
        f"relation{'s' if n_rel != 1 else ''} ({relation_label(cfg)}, {cfg.relations.source}, template "
        f"{cfg.relations.template}); Gated-LPI {cfg.attribution.norm} norm"
        f"{'' if cfg.attribution.enabled else ' (off)'}; ablation: {ablation_phrase(cfg)}."
    )


def dataset_source(cfg: RunConfig) -> str:
    """Where the run's examples were read from: the bundled folder, the upstream files' URL, or a folder."""
    source = cfg.relations.source
    if source == "bundled":
        return str(BUNDLED_DIR)
    if source == "lre":
        from gated_lpi_exp.data.lre import DEFAULT_BASE_URL

        return DEFAULT_BASE_URL
    return source


def dataset_name(cfg: RunConfig) -> str:
    """The dataset's name in the UI: ``bundled:linguistic+factual``."""
    return f"{cfg.relations.source if '/' not in cfg.relations.source else 'local'}:{relation_label(cfg)}"
