"""Figures: real PNGs, and the titles, axis labels, scales and legends a reader relies on."""

from __future__ import annotations

import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.text import Text

from gated_lpi_exp.plots import (
    FIGURES,
    FigureSettings,
    model_colors,
    plot_ablation,
    plot_concentration,
    plot_hit_curves,
    plot_jaccard,
    plot_layer_distributions,
    plot_layer_importance_over_steps,
    to_png,
)
from gated_lpi_exp.plots.dynamics import pick_steps
from gated_lpi_exp.schemas import AblationResult, DynamicsCurve, HitSummary, LaggedOverlap, LayerProfile

STEPS = {"tiny_moe": [10, 100, 1000, 10000], "tiny_dense": [10, 100, 1000]}
LAYERS = {"tiny_moe": 2, "tiny_dense": 3}


def _curves(model):
    steps = STEPS[model]
    rows = [
        dict(metric=m, unit=u, step=s, value=0.1 * i) for m in ("j_stab", "r_t") for u in ("ffn", "attn")
        for i, s in enumerate(steps[1:], 1)
    ]  # fmt: skip
    return DynamicsCurve.check(pd.DataFrame(rows))


def _lagged(model):
    """One lagged pair per unit, the first analysed step vs the last, at 40% (random sets: 1%)."""
    first, last = STEPS[model][0], STEPS[model][-1]
    rows = [
        dict(metric="j_lag", unit=u, requested_a=first, requested_b=last, step_a=first, step_b=last,
             value=0.4, set_size=10, population=1000, random_baseline=0.01)
        for u in ("ffn", "attn")
    ]  # fmt: skip
    return LaggedOverlap.check(pd.DataFrame(rows))


def _profiles(model):
    rows = [
        dict(step=s, unit=u, relation=r, layer=layer, importance=0.1 * (layer + i))
        for i, s in enumerate(STEPS[model]) for u in ("ffn", "attn") for r in ("all", "country_language")
        for layer in range(LAYERS[model])
    ]  # fmt: skip
    return LayerProfile.check(pd.DataFrame(rows))


def _hits(model):
    rows = []
    for i, s in enumerate(STEPS[model]):
        for k in (1, 10):
            rows.append(dict(step=s, scope="overall", group="all", k=k, hit=0.1 * i, n=8))
            for cat in ("factual", "bias"):
                rows.append(dict(step=s, scope="category", group=cat, k=k, hit=0.05 * i, n=4))
    return HitSummary.check(pd.DataFrame(rows))


def _ablation(model, seeds=2):
    rows = []
    for s in STEPS[model]:
        for name in ("top1_head", "top1pct_ffn"):
            common = dict(step=s, ablation=name, n_units=1, heldout=False)
            rows.append(dict(common, condition="base", seed=-1, hit_at_10=0.8, drop_percent=0.0))
            rows.append(dict(common, condition="targeted", seed=-1, hit_at_10=0.4, drop_percent=50.0))
            for seed in range(seeds):
                rows.append(
                    dict(common, condition="random", seed=seed, hit_at_10=0.7 + 0.1 * seed, drop_percent=0.0)
                )
    return AblationResult.check(pd.DataFrame(rows))


def _both(make):
    return {m: make(m) for m in STEPS}


def _legend_texts(fig: Figure) -> list[str]:
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    return [t.get_text() for legend in legends for t in legend.get_texts()]


def _check_png(fig: Figure, path):
    data = to_png(fig)
    path.write_bytes(data)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_jaccard_figure(tmp_path):
    fig = plot_jaccard(_both(_curves))
    assert "Jaccard" in fig.get_suptitle() and "Top-1%" in fig.get_suptitle()
    assert [ax.get_title() for ax in fig.axes] == ["FFN neurons", "ATTN neurons"]
    assert all(ax.get_xlabel() == "training step" for ax in fig.axes)
    assert "(%)" in fig.axes[0].get_ylabel()
    assert set(_legend_texts(fig)) == {"tiny_moe", "tiny_dense"}
    assert fig.axes[0].get_xscale() == "log"  # steps 100..10000 span two decades
    assert list(fig.axes[0].lines[0].get_ydata()) == pytest.approx([10, 20, 30])  # J in %
    _check_png(fig, tmp_path / "fig1.png")


def test_concentration_and_colours_are_fixed_per_model(tmp_path):
    colors = {"tiny_dense": "#000000", "tiny_moe": "#ff0000"}
    fig = plot_concentration(_both(_curves), top_frac=0.05, colors=colors)
    assert "top-5%" in fig.get_suptitle()
    moe_line, dense_line = fig.axes[0].lines
    assert moe_line.get_color() == "#ff0000" and dense_line.get_color() == "#000000"
    assert (
        model_colors(["a", "b"]) == model_colors(["a", "b"])
        and len(set(model_colors(["a", "b"]).values())) == 2
    )
    _check_png(fig, tmp_path / "rt.png")


def test_layer_importance_over_steps(tmp_path):
    fig = plot_layer_importance_over_steps(_both(_profiles))
    assert [ax.get_title() for ax in fig.axes] == ["FFN layers", "ATTN layers"]
    assert "nats" in fig.axes[0].get_ylabel()
    moe = fig.axes[0].lines[0]
    assert list(moe.get_ydata()) == pytest.approx([0.05, 0.15, 0.25, 0.35])  # mean of layers 0,1 (+ 0.1 i)
    assert set(_legend_texts(fig)) == {"tiny_moe", "tiny_dense"}
    _check_png(fig, tmp_path / "fig2.png")


def test_layer_distributions_default_and_chosen_steps(tmp_path):
    fig = plot_layer_distributions(_both(_profiles))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "tiny_moe: FFN layers",
        "tiny_dense: FFN layers",
        "tiny_moe: ATTN layers",
        "tiny_dense: ATTN layers",
    ]
    assert fig.axes[0].get_xlabel() == "layer"
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        "step 10",
        "step 1,000",
        "step 10,000",
    ]
    _check_png(fig, tmp_path / "fig34.png")
    fig3 = plot_layer_distributions(_both(_profiles), steps=[90], units=("ffn",))
    assert len(fig3.axes) == 2 and "FFN" in fig3.get_suptitle() and "ATTN" not in fig3.get_suptitle()
    assert [t.get_text() for t in fig3.axes[1].get_legend().get_texts()] == ["step 100"]
    assert pick_steps([5, 1, 3, 9], None) == [1, 5, 9] and pick_steps([0, 10, 20], [4, 6, 100]) == [0, 10, 20]


def test_ablation_figure(tmp_path):
    labels = {"top1_head": "top-1 head", "top10_heads": "top-10 heads", "top1pct_ffn": "top-1% FFN neurons"}
    fig = plot_ablation(_both(_ablation), labels=labels)
    assert [ax.get_title() for ax in fig.axes] == ["ablate top-1 head", "ablate top-1% FFN neurons"]
    unlabelled = plot_ablation(_both(_ablation))  # no labels: the names, sorted
    assert [ax.get_title() for ax in unlabelled.axes] == ["ablate top1_head", "ablate top1pct_ffn"]
    assert fig.axes[0].get_ylabel() == "HIT@10 (% of examples)"
    texts = _legend_texts(fig)
    assert {"tiny_moe", "tiny_dense", "no ablation", "targeted (top units)", "random control (± sd)"} <= set(
        texts
    )
    assert sum(isinstance(c, PolyCollection) for c in fig.axes[0].collections) == 2  # one band per model
    random_moe = fig.axes[0].lines[2]
    assert list(random_moe.get_ydata()) == pytest.approx([75.0] * 4)  # seeds at 70% and 80%
    _check_png(fig, tmp_path / "fig5.png")
    empty = plot_ablation({})
    assert empty.axes[0].texts[0].get_text() == "no ablation results"


def test_hit_curves(tmp_path):
    fig = plot_hit_curves(_both(_hits))
    assert [ax.get_title() for ax in fig.axes] == ["HIT@1", "HIT@10"]
    texts = _legend_texts(fig)
    assert {"tiny_moe (all relations)", "tiny_dense (all relations)", "factual", "bias"} <= set(texts)
    overall, *per_category = fig.axes[0].lines[:3]
    assert overall.get_linewidth() > per_category[0].get_linewidth()
    _check_png(fig, tmp_path / "hits.png")
    assert len(plot_hit_curves(_both(_hits), ks=[10], categories=False).axes[0].lines) == 2


def test_step_axis_scales():
    short = {"m": _curves("tiny_dense").assign(step=lambda d: d.step // 10)}  # steps 10, 100: one decade
    assert plot_jaccard(short).axes[0].get_xscale() == "linear"
    with_zero = {"m": _profiles("tiny_moe").assign(step=lambda d: d.step.replace(10, 0))}  # 0, 100..10000
    assert plot_layer_importance_over_steps(with_zero).axes[0].get_xscale() == "symlog"
    empty = plot_jaccard({"m": _curves("tiny_moe").iloc[0:0]})
    assert empty.axes[0].texts[0].get_text() == "no data"


LONG_NAMES = {"tiny_moe": "olmoe_1b_7b_at_every_checkpoint", "tiny_dense": "olmo_7b_0424_at_every_checkpoint"}
TABLES = {
    "dynamics_curves": _curves,
    "layer_profiles": _profiles,
    "hit_summary": _hits,
    "ablation": _ablation,
    "dynamics_lagged": _lagged,
}


def _one_ablation(model):
    table = _ablation(model)
    return table[table["ablation"] == "top1_head"].assign(ablation="top10_heads")


def _text_artists(fig: Figure) -> list[tuple[str, object]]:
    """Every piece of text a reader must see whole: titles, axis labels, tick labels, legends, annotations."""
    found: list[tuple[str, object]] = [
        ("figure title", fig._suptitle),
        *(("legend", lg) for lg in fig.legends),
    ]
    for i, ax in enumerate(fig.axes):  # an axis: its label and the tick labels it draws
        found += [
            (f"axes {i} title", ax.title),
            (f"axes {i} x axis", ax.xaxis),
            (f"axes {i} y axis", ax.yaxis),
        ]
        found.append((f"axes {i} legend", ax.get_legend()))
        found += [(f"axes {i} text {t.get_text()!r}", t) for t in ax.texts]
    return [(name, a) for name, a in found if a is not None and (not isinstance(a, Text) or a.get_text())]


def _outside(fig: Figure) -> list[str]:
    """The text artists that reach outside the canvas once drawn as saved (1 px of slack for rounding)."""
    to_png(fig)  # lays the figure out as saved
    renderer = fig.canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    out: list[str] = []
    for name, artist in _text_artists(fig):
        box = artist.get_tightbbox(renderer)
        if box is None:  # nothing drawn (an axis without labels on a shared-y panel)
            continue
        if box.x0 < -1 or box.y0 < -1 or box.x1 > width + 1 or box.y1 > height + 1:
            out.append(f"{name}: {box.bounds} outside {width:.0f}x{height:.0f}")
    return out


@pytest.mark.parametrize("spec", FIGURES, ids=lambda s: s.stem)
@pytest.mark.parametrize("models", ["one", "two with long names"])
def test_every_figure_fits_its_canvas_with_one_colour_per_model(spec, models):
    make = _one_ablation if spec.table == "ablation" and models == "one" else TABLES[spec.table]
    names = ["tiny_moe"] if models == "one" else list(STEPS)
    data = {LONG_NAMES[m] if models != "one" else m: make(m) for m in names}
    colors = model_colors(data)
    extras = {t: {name: TABLES[t](m) for name, m in zip(data, names, strict=True)} for t in spec.extras}
    fig = spec.render(data, colors, FigureSettings(top_frac=0.05), extras)
    assert _outside(fig) == []
    legend_colors = {
        t.get_text(): h.get_color()
        for lg in fig.legends
        for t, h in zip(lg.get_texts(), lg.legend_handles, strict=True)
        if t.get_text().split(" (")[0] in colors
    }
    # Every model that a figure-level legend names has its own colour, the one the report gives it.
    assert all(colors[name.split(" (")[0]] == c for name, c in legend_colors.items())
    assert len(set(legend_colors.values())) == len(legend_colors)


def test_layer_axes_tick_whole_layers_only():
    fig = plot_layer_distributions({"m": _profiles("tiny_moe")}, units=("ffn",))  # 2 layers
    to_png(fig)
    ticks = fig.axes[0].get_xticks()
    visible = [t for t in ticks if fig.axes[0].get_xlim()[0] <= t <= fig.axes[0].get_xlim()[1]]
    assert visible and all(float(t).is_integer() for t in visible)


def test_figure_titles_state_the_runs_top_share():
    jaccard = next(s for s in FIGURES if s.stem == "fig1_jaccard")
    fig = jaccard.render({"m": _curves("tiny_moe")}, model_colors(["m"]), FigureSettings(top_frac=0.02))
    assert "Top-2%" in fig.get_suptitle() and "top-2%" in fig.axes[0].get_ylabel()


def test_fig1_as_declared_draws_the_lagged_pairs_beside_the_curve():
    jaccard = next(s for s in FIGURES if s.stem == "fig1_jaccard")
    assert jaccard.extras == ("dynamics_lagged",)
    curves, lagged = {"m": _curves("tiny_moe")}, {"m": _lagged("tiny_moe")}
    fig = jaccard.render(curves, model_colors(["m"]), FigureSettings(), {"dynamics_lagged": lagged})
    for ax in fig.axes[:2]:
        span = [line for line in ax.lines if line.get_linestyle() == "--"]
        assert len(span) == 1 and list(span[0].get_xdata()) == [10, 10000]
        assert list(span[0].get_ydata()) == pytest.approx([40, 40])  # J_lag in %
        assert [t.get_text() for t in ax.texts] == ["J(10, 10K) = 40.0% (random 1.00%)"]
    plain = jaccard.render(curves, model_colors(["m"]), FigureSettings())  # a run without lagged pairs
    assert not any(line.get_linestyle() == "--" for line in plain.axes[0].lines) and not plain.axes[0].texts
