"""Every config option composes; bad values fail before any model loads, naming the valid choices."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ConfigKeyError, ValidationError

from gated_lpi_exp.compose import CONF_DIR, EXPERIMENTS_DIR, compose_dictconfig, compose_run_config
from gated_lpi_exp.config import ModelConfig, RunConfig
from gated_lpi_exp.errors import ConfigurationError


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["model", "checkpoints", "relations", "ablation", "tracking"])
def test_every_option_of_every_group_composes(group):
    options = _options(group)
    assert options, f"conf/{group} is empty"
    for option in options:
        cfg = compose_run_config([f"{group}={option}"])
        assert isinstance(cfg, RunConfig)


def test_every_experiment_preset_composes():
    presets = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))
    for preset in presets:
        assert isinstance(compose_run_config([f"experiments={preset}"]), RunConfig)


def test_defaults_are_the_embedded_tiny_moe_suite_with_paper_choices():
    cfg = compose_run_config()
    assert cfg.model.kind == "suite" and cfg.model.family == "olmoe"
    assert cfg.attribution.norm == "frozen" and cfg.attribution.target == "gold"
    assert cfg.relations.template == "zs:0" and cfg.relations.source == "bundled"
    assert cfg.tracking.uri == "sqlite:///mlflow.db"
    assert cfg.ablation.name == "top10_heads"  # the default run exercises every stage


def test_group_choices_set_the_documented_fields():
    cfg = compose_run_config(
        ["model=olmoe", "relations=factual", "ablation=top10_heads", "checkpoints=paper"]
    )
    assert cfg.model.source == "allenai/OLMoE-1B-7B-0924" and cfg.model.kind == "hub"
    assert cfg.relations.categories == ["factual"]
    assert cfg.ablation.unit == "head" and cfg.ablation.count == 10
    assert cfg.checkpoints.select == "grid" and cfg.checkpoints.match == "nearest"
    assert cfg.ablation.label == "top-10 heads"
    cfg = compose_run_config(["relations.names=[country_capital_city,word_first_letter]"])
    assert cfg.relations.names == ["country_capital_city", "word_first_letter"]


@pytest.mark.parametrize(
    ("model", "source", "end"),
    [("olmoe", "allenai/OLMoE-1B-7B-0924", 1_200_000), ("olmo", "allenai/OLMo-7B", 600_000)],
)
def test_the_papers_models_compose_the_papers_protocol(model, source, end):
    cfg = compose_run_config([f"model={model}", "ablation=top10_heads"])
    assert (cfg.model.source, cfg.model.dtype, cfg.model.series_end) == (source, "float32", end)
    assert (cfg.relations.source, cfg.relations.duplicates, cfg.relations.template) == ("lre", "keep", "zs:0")
    assert cfg.checkpoints.select == "grid" and cfg.checkpoints.match == "nearest"
    assert cfg.checkpoints.grid == [[10_000, 70_000, 10_000], [100_000, end, 100_000]]
    assert cfg.ablation.rank_by == "signed"
    assert cfg.dynamics.windows == {
        "early": [10_000, 70_001],
        "late": [100_000, 600_001],
        "10k_600k": [10_000, 600_001],
        "10k_1.2m": [10_000, 1_200_001],
    }
    assert cfg.dynamics.lagged_pairs == [[100_000, 300_000]]


def test_the_command_line_overrides_the_protocol_of_a_papers_model():
    cfg = compose_run_config(
        [
            "model=olmoe",
            "relations.source=bundled",
            "checkpoints=all",
            "model.dtype=bfloat16",
            "relations=factual",
        ]
    )
    assert (cfg.relations.source, cfg.relations.categories) == ("bundled", ["factual"])
    assert cfg.checkpoints.select == "all" and cfg.model.dtype == "bfloat16"
    cfg = compose_run_config(["model=olmo_0424"])
    assert cfg.model.source == "allenai/OLMo-7B-0424-hf" and cfg.relations.source == "bundled"
    assert compose_run_config(["model=olmo_0424", "+protocol=paper"]).relations.source == "lre"


def test_unknown_group_option_names_the_valid_ones():
    with pytest.raises((MissingConfigException, ConfigCompositionException)) as err:
        compose_dictconfig(["model=gpt5"])
    assert "olmoe" in str(err.value) and "tiny_moe" in str(err.value)


def test_unknown_key_is_refused():
    with pytest.raises((ConfigCompositionException, ConfigKeyError)) as err:
        compose_dictconfig(["attribution.nrom=exact"])
    assert "nrom" in str(err.value)


def test_wrong_type_is_refused():
    with pytest.raises((ConfigCompositionException, ValidationError)) as err:
        compose_dictconfig(["evaluation.batch_size=many"])
    assert "batch_size" in str(err.value)


@pytest.mark.parametrize(
    "override, names",
    [
        ("attribution.norm=approx", ["frozen", "exact"]),
        ("attribution.target=silver", ["gold", "predicted"]),
        ("model.dtype=float8", ["bfloat16", "float32"]),
        ("model.device=tpu", ["cuda"]),
        ("checkpoints.select=some", ["all", "steps", "range"]),
        ("checkpoints.missing=ignore", ["warn", "fail"]),
        ("relations.categories=[geography]", ["linguistic", "bias"]),
        ("relations.duplicates=merge", ["drop", "keep"]),
        ("relations.template=fewshot", ["zs:N"]),
        ("ablation.rank_by=random", ["abs", "signed"]),
        ("tracking.on_unreachable=retry", ["fail", "local"]),
        ("dynamics.top_frac=2.0", ["(0, 1]"]),
    ],
)
def test_bad_values_fail_naming_the_valid_choices(override, names):
    with pytest.raises(ConfigurationError) as err:
        compose_run_config([override])
    for name in names:
        assert name in str(err.value)


def test_inconsistent_combinations_fail():
    with pytest.raises(ConfigurationError, match="checkpoints.steps"):
        compose_run_config(["checkpoints.select=steps", "checkpoints.steps=[]"])
    with pytest.raises(ConfigurationError, match="suite.family"):
        compose_run_config(["model=tiny_moe", "model.suite.family=olmo"])
    with pytest.raises(ConfigurationError, match="ablation.count"):
        compose_run_config(["ablation=top10_heads", "ablation.count=0"])


def test_series_configs_compose_with_their_own_branch_patterns():
    pythia = compose_run_config(["model=pythia"])
    assert (pythia.model.family, pythia.model.source, pythia.model.name) == (
        "gpt_neox",
        "EleutherAI/pythia-160m",
        "pythia-160m",
    )
    big = compose_run_config(["model=pythia", "model.size=1.4b"]).model
    assert (big.source, big.name, big.tokens_per_step) == ("EleutherAI/pythia-1.4b", "pythia-1.4b", 2097152)
    patterns = {
        m: compose_run_config([f"model={m}"]).model.branch_pattern
        for m in ("pythia", "olmo2_1b", "amber", "olmoe")
    }
    assert len(set(patterns.values())) == 4  # a pattern per series
    assert compose_run_config(["model=olmo2_7b"]).model.family == "olmo2"
    assert compose_run_config(["model=amber"]).model.family == "llama"


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("model.size=3b", "model.size='3b' is not a size of this series; choose one of: 14m, 31m"),
        ("model.branch_pattern='^ckpt_(\\d+)$'", "has no \\(\\?P<step>"),
        ("model.branch_pattern='^step(?P<step>\\d+'", "is not a regular expression"),
        (
            "model.family=gpt2",
            "model.family='gpt2' is not valid; choose one of: deepseek_v3, gpt_neox, llama",
        ),
    ],
)
def test_bad_series_values_fail_naming_the_fix(override, match):
    with pytest.raises(ConfigurationError, match=match):
        compose_run_config(["model=pythia", override])


def _default(cls: type, field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _restated(node: Any, cls: type, path: str) -> list[str]:
    """The keys of a raw YAML mapping that set a field of dataclass ``cls`` to its default."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    found = []
    for key, value in node.items():
        if key in ("defaults", "hydra") or key not in fields:  # unknown keys: Hydra refuses them itself
            continue
        field, where = fields[key], f"{path}{key}"
        default = _default(cls, field)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            found += _restated(value, type(default), where + ".")
        elif isinstance(value, str) and value.startswith("${"):
            continue  # an interpolation names where the value comes from, it restates nothing
        elif value == default:
            found.append(f"{where}: {value!r}")
    return found


def _yaml_files() -> list[tuple[Path, type, str]]:
    """Every config file with the dataclass its keys address: a group file addresses its group's field
    (``conf/model/*.yaml`` -> ``ModelConfig``), ``config.yaml`` and ``# @package _global_`` files the run."""
    files = [(CONF_DIR / "config.yaml", RunConfig, "")]
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    for path in sorted(CONF_DIR.glob("*/*.yaml")) + sorted(EXPERIMENTS_DIR.glob("*.yaml")):
        group = path.parent.name
        if "@package _global_" in path.read_text():
            files.append((path, RunConfig, ""))
        elif group in fields:
            files.append((path, type(_default(RunConfig, fields[group])), f"{group}."))
        else:
            assert group == "hydra", f"{path}: which part of the run config does this group set?"
    return files


def test_no_yaml_file_restates_a_default_of_the_config_dataclasses():
    """A default is written once, in ``config.py`` under its docstring: a YAML that repeated it would keep
    the old value silently when the documented default changes."""
    files = _yaml_files()
    assert len(files) >= 20
    restated = {
        str(path.relative_to(CONF_DIR.parent)): found
        for path, cls, prefix in files
        if (found := _restated(yaml.safe_load(path.read_text()) or {}, cls, prefix))
    }
    assert restated == {}


def test_the_restated_default_check_sees_one():
    assert _restated({"evaluation": {"ks": [1, 10], "batch_size": 8}}, RunConfig, "") == [
        "evaluation.ks: [1, 10]"
    ]
    assert _restated({"suite": {"size": "tiny", "name": "${..source}"}}, ModelConfig, "model.") == [
        "model.suite.size: 'tiny'"
    ]


def test_a_suite_preset_names_its_suite_once_and_the_rest_follows():
    cfg = compose_run_config(["model=micro_dense"]).model
    assert (cfg.name, cfg.source, cfg.suite.name, cfg.family, cfg.suite.family) == (
        "micro_dense",
        "micro_dense",
        "micro_dense",
        "olmo",
        "olmo",
    )
    renamed = compose_run_config(["model=micro_dense", "model.name=dense run"]).model
    assert renamed.suite.name == "micro_dense"  # a display name never renames (so rebuilds) the suite
    other = compose_run_config(["model=micro_dense", "model.source=my_suite", "model.family=olmoe"]).model
    assert (other.name, other.suite.name, other.suite.family) == ("my_suite", "my_suite", "olmoe")


def test_an_ablation_name_is_a_label_and_the_unit_and_counts_are_checked():
    probe = compose_run_config(["ablation=top1_head", "ablation.name=probe_2", "ablation.label=my probe"])
    assert (probe.ablation.name, probe.ablation.display_name, probe.ablation.enabled) == (
        "probe_2",
        "my probe",
        True,
    )
    assert compose_run_config(["ablation=none"]).ablation.display_name == "none"
    with pytest.raises(ConfigurationError, match="must be a label"):
        compose_run_config(["ablation.name=top 3 heads"])
    with pytest.raises(ConfigurationError, match="ablation.unit=head or ffn_neuron"):
        compose_run_config(["ablation=none", "ablation.name=top3"])
    with pytest.raises(ConfigurationError, match="ablation.unit=head or ffn_neuron"):
        compose_run_config(["ablation=top1_head", "ablation.name=none"])
    with pytest.raises(ConfigurationError, match="fraction"):
        compose_run_config(["ablation=top1pct_ffn", "ablation.fraction=0"])


def test_a_default_derived_in_post_init_follows_the_composed_values_not_the_defaults():
    """``attribution.attn_positions`` None means "follow ``compat``"; no YAML states it, so the schema must
    keep the declared None rather than what ``__post_init__`` derived from the default ``compat``."""
    assert compose_run_config().attribution.attn_positions is False
    assert compose_run_config(["attribution.compat=released_code"]).attribution.attn_positions is True
    explicit = ["attribution.compat=released_code", "attribution.attn_positions=false"]
    assert compose_run_config(explicit).attribution.attn_positions is False
