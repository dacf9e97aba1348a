"""Benchmark and cost planner of Gated-LPI attribution (``python -m gated_lpi_exp.bench``).

``python -m gated_lpi_exp.bench [--json PATH] [--quick]`` scores one random-weight FFN layer of real size
(an OLMoE-width MoE layer and an OLMo-width dense layer) three ways in one process, on identical inputs:

- the engine (``engine.score_neurons``, what ``gated_lpi`` runs per FFN layer);
- the anchor-style reference (materialised residuals, one unembedding matmul, ``log_softmax``), timed on a
  few prompts since its cost per element does not depend on the batch;
- the roofline: the measured matmul and exp-sum rates, from which the least time of the engine's work is
  its projection FLOPs at the matmul rate plus its prompt × neuron × vocabulary elements at the exp-sum rate.

``python -m gated_lpi_exp.bench plan [overrides...]`` prints what a run will cost before anything is
downloaded (``planner.py``); with ``--measure`` it then runs the attribution stage on the first checkpoint and
prints measured / planned seconds (``measure.py``).
"""

from gated_lpi_exp.bench.layers import DEFAULT_SHAPES, QUICK_SHAPES, LayerShape, build_layer, measure_shape
from gated_lpi_exp.bench.machine import PeakMemory, Rates, machine_info, measure_rates

__all__ = [
    "DEFAULT_SHAPES",
    "QUICK_SHAPES",
    "LayerShape",
    "PeakMemory",
    "Rates",
    "build_layer",
    "machine_info",
    "measure_rates",
    "measure_shape",
]
