"""Every config option composes; bad values fail before any model loads, naming the valid choices."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ConfigKeyError, ValidationError

from gated_lpi_exp.compose import CONF_DIR, EXPERIMENTS_DIR, compose_dictconfig, compose_run_config
from gated_lpi_exp.config import RunConfig
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
        compose_run_config(["model=tiny_moe", "model.family=olmo"])
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
