"""The paper's published numbers (arXiv 2601.08383), shown next to ours for reference only.

Transcribed from the text version of the paper (``paper/deconstructing-pretraining-2601.08383.txt``):

- Table 2 "Neuron-level stability metrics": Mean J_stab (%) in the step windows 10K-70K and 100K-600K, and
  Mean R_t (%). It sits in the FFN-neuron subsection ("MoE's Reinforced Core in FFN Neurons") and its OLMo
  R_t (26.4%) is quoted there, so it is read as FFN neurons. The paper gives no averaged ATTN values (only
  points on the ATTN curves, in the text) and does not say over which steps R_t is averaged.
- Table 3: ρ_avg and σ_rel, FFN and ATTN: OLMo (10K-600K), OLMoE (10K-600K), OLMoE (10K-1.2M).
- Table 4 "Performance Drop (%) from Masking": top-1 head, top-10 heads, top-1% FFN neurons; the text calls
  them averages over checkpoints. No random control is reported.

Window names: the paper's two J_stab windows are matched to run windows named ``early`` (10K-70K) and
``late`` (100K-600K), e.g. ``dynamics.windows={early: [10000, 70001], late: [100000, 600001]}`` (start
inclusive, stop exclusive); window ``all`` is each model's whole checkpoint range. Every paper cell shows the
paper's own step range, so a run window with other bounds is visibly not the same measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER_MODELS = ("OLMoE-1B-7B", "OLMo-7B")
"""Column order of the paper's models in the report."""
PAPER_CITATION = "Deconstructing Pre-training (arXiv 2601.08383)"


@dataclass(frozen=True)
class PaperValue:
    """One published number, in the units the report shows (% for J_stab, R_t and drops)."""

    value: float
    steps: str
    """The paper's step range for this number."""
    where: str
    """Table of the paper it comes from."""

    def text(self, digits: int) -> str:
        """``22.2 (10K–70K)``."""
        return f"{self.value:.{digits}f} ({self.steps})"


_MOE, _DENSE = PAPER_MODELS

PAPER_VALUES: dict[tuple[str, str, str], dict[str, PaperValue]] = {
    # (metric, unit, window) for Tables 2-3; (metric, ablation, condition) for Table 4.
    ("j_stab", "ffn", "early"): {
        _MOE: PaperValue(22.2, "10K–70K", "Table 2"),
        _DENSE: PaperValue(6.3, "10K–70K", "Table 2"),
    },
    ("j_stab", "ffn", "late"): {
        _MOE: PaperValue(25.3, "100K–600K", "Table 2"),
        _DENSE: PaperValue(6.1, "100K–600K", "Table 2"),
    },
    ("r_t", "ffn", "all"): {
        _MOE: PaperValue(48.9, "range not stated", "Table 2"),
        _DENSE: PaperValue(26.4, "range not stated", "Table 2"),
    },
    # Table 3 again, matched by the windows of the paper's protocol (conf/protocol/paper.yaml).
    **{
        (metric, unit, "10k_600k"): {
            _MOE: PaperValue(moe, "10K–600K", "Table 3"),
            _DENSE: PaperValue(dense, "10K–600K", "Table 3"),
        }
        for metric, unit, moe, dense in (
            ("rho_avg", "ffn", 0.97, 0.54),
            ("sigma_rel", "ffn", 0.37, 5.01),
            ("rho_avg", "attn", 0.97, 0.49),
            ("sigma_rel", "attn", 0.49, 8.64),
        )
    },
    **{
        (metric, unit, "10k_1.2m"): {_MOE: PaperValue(moe, "10K–1.2M", "Table 3")}
        for metric, unit, moe in (
            ("rho_avg", "ffn", 0.97),
            ("sigma_rel", "ffn", 0.47),
            ("rho_avg", "attn", 0.95),
            ("sigma_rel", "attn", 0.76),
        )
    },
    # Section text (not a table): top-1% overlap of 100K vs 300K; random sets: FFN 0.4%, ATTN 0.005 (0.5%).
    ("j_lag", "ffn", "100000_300000"): {_MOE: PaperValue(13.0, "100K vs 300K, 'about 13%'", "text")},
    ("j_lag", "attn", "100000_300000"): {_MOE: PaperValue(26.73, "100K vs 300K", "text")},
    ("j_lag", "ffn", "100000_300000.random"): {_MOE: PaperValue(0.4, "random 1% sets, 100K vs 300K", "text")},
    ("j_lag", "attn", "100000_300000.random"): {
        _MOE: PaperValue(0.5, "random 1% sets, 100K vs 300K, 'averaged only 0.005'", "text")
    },
    ("rho_avg", "ffn", "all"): {
        _MOE: PaperValue(0.97, "10K–1.2M", "Table 3"),
        _DENSE: PaperValue(0.54, "10K–600K", "Table 3"),
    },
    ("sigma_rel", "ffn", "all"): {
        _MOE: PaperValue(0.47, "10K–1.2M", "Table 3"),
        _DENSE: PaperValue(5.01, "10K–600K", "Table 3"),
    },
    ("rho_avg", "attn", "all"): {
        _MOE: PaperValue(0.95, "10K–1.2M", "Table 3"),
        _DENSE: PaperValue(0.49, "10K–600K", "Table 3"),
    },
    ("sigma_rel", "attn", "all"): {
        _MOE: PaperValue(0.76, "10K–1.2M", "Table 3"),
        _DENSE: PaperValue(8.64, "10K–600K", "Table 3"),
    },
    ("drop_percent", "top1_head", "targeted"): {
        _MOE: PaperValue(0.06, "checkpoint mean", "Table 4"),
        _DENSE: PaperValue(16.46, "checkpoint mean", "Table 4"),
    },
    ("drop_percent", "top10_heads", "targeted"): {
        _MOE: PaperValue(9.44, "checkpoint mean", "Table 4"),
        _DENSE: PaperValue(50.43, "checkpoint mean", "Table 4"),
    },
    ("drop_percent", "top1pct_ffn", "targeted"): {
        _MOE: PaperValue(35.47, "checkpoint mean", "Table 4"),
        _DENSE: PaperValue(96.19, "checkpoint mean", "Table 4"),
    },
}
"""The published numbers the report's rows can be matched to."""

TABLE_NOTES = {
    "table2": "Paper Table 2 reports FFN neurons only (read from its section); it gives no ATTN averages. "
    "Its text compares the top-1% sets of OLMoE at 100K and 300K: about 13% of FFN neurons survive (random "
    "sets: 0.4%), and the ATTN overlap is 26.73% (random: 0.005).",
    "table3": "Paper Table 3 reports OLMo over 10K–600K and OLMoE over 10K–600K and 10K–1.2M: the rows of "
    "windows 10k_600k and 10k_1.2m (conf/protocol/paper.yaml) match them exactly; the 'all checkpoints' row "
    "shows each model's whole published range.",
    "table4": "Paper Table 4 has no random control; its drops are averages over all analysed checkpoints.",
}
"""What the paper reports that the matched cells leave out."""


PAPER_CHOICES: dict[str, tuple[tuple[str, ...], str]] = {
    "relations.source": (("lre",), "the 12 upstream files (Hernandez et al.), 906 samples"),
    "relations.duplicates": (("keep",), "all 906 samples kept"),
    "relations.template": (("zs:0",), "the first zero-shot template"),
    "model.dtype": (("float32",), "float32 forward passes"),
    "checkpoints.select": (("grid",), "10K–70K every 10K, then every 100K to the series' end"),
    "attribution.norm": (("frozen",), "final-norm scale frozen"),
    "attribution.target": (
        ("gold", "predicted"),
        "text: the correct answer; released code: top-1 prediction",
    ),
    "ablation.rank_by": (("signed",), "released code: signed increase"),
}
"""The paper's protocol, by run parameter: the values that match it and how the paper describes it."""


def paper_cells(key: tuple[str, str, str], digits: int) -> list[str]:
    """The paper columns of one report row: a value with its step range, or an em dash."""
    found = PAPER_VALUES.get(key, {})
    return [found[m].text(digits) if m in found else "—" for m in PAPER_MODELS]
