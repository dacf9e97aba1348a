"""Run the paper's released OLMoE notebook cells on a tiny model, in a transformers 4.46.3 venv.

Started by ``crosscheck.py`` with the legacy venv's interpreter; it imports nothing from this project. The
patched modeling files are loaded in place of transformers' own modules (what the released README does by
copying them over site-packages, without touching the venv). The notebook's code cells run in order, as
released, with these substitutions only (each asserted to match exactly once):

- cell 0: the model's dimensions (``LAYER_NUM``, ``HEAD_NUM``, ``HEAD_DIM``) and ``cpu`` instead of
  ``cuda:3``;
- cell 2: the model folder; for the ``causal`` variant also ``attn_implementation="eager"``;
- cell 3: the prompt and its number ``n``.

After each prompt it also records, with the notebook's own variables and functions: the prompt's token ids,
the final logits at T, the head scores without the 4-decimal rounding (cell "head-level" re-run with
``round`` as the identity), the attention-neuron scores of contributions summed over positions, and the
largest share of attention weight any position puts on later positions. Written to ``<out>/<variant>/``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

HEAD_CELL = "#head-level increase (value heads)"
SUMMED_ATTENTION_NEURONS = """
summed_attn_neurons = []
for test_layer in range(LAYER_NUM):
    cur_layer_input_last = torch.tensor(all_pos_layer_input[test_layer])[-1]
    cur_v_summed = torch.tensor(all_last_attn_subvalues[test_layer]).sum(1)
    cur_attn_o_split = model.model.layers[test_layer].self_attn.o_proj.weight.data.T.view(HEAD_NUM, HEAD_DIM, -1)
    cur_plus = cur_attn_o_split * cur_v_summed.unsqueeze(-1) + cur_layer_input_last
    origin_prob = torch.log(get_prob(get_bsvalues(cur_layer_input_last, model, final_var))[predict_index])
    cur_probs = torch.log(get_prob(get_bsvalues(cur_plus, model, final_var))[:, :, predict_index])
    summed_attn_neurons.append((cur_probs - origin_prob).reshape(-1).tolist())
"""


def load_patched(code: Path, family: str):
    """Import the released ``modeling_<family>.py`` as transformers' own module of that name."""
    importlib.import_module(f"transformers.models.{family}")
    name = f"transformers.models.{family}.modeling_{family}"
    spec = importlib.util.spec_from_file_location(name, code / f"modeling_{family}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def code_cells(notebook: Path) -> list[str]:
    cells = json.loads(notebook.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def substitute(source: str, old: str, new: str) -> str:
    if source.count(old) != 1:
        raise RuntimeError(f"the released cell no longer contains {old!r} exactly once")
    return source.replace(old, new)


def later_weight(attn_weights: list) -> float:
    """Largest share of attention weight a query position puts on positions after itself."""
    worst = 0.0
    for weights in attn_weights:  # [1, heads, q, k] per layer
        w = weights[0].float()
        later = torch.triu(torch.ones(w.shape[-2:], dtype=torch.bool), diagonal=1)
        worst = max(worst, float((w * later).sum(-1).max()))
    return worst


def run_olmoe_notebook(code: Path, model_dir: Path, prompts: list[str], variant: str, out: Path) -> None:
    """All code cells of the OLMoE notebook, for every prompt, writing its JSON files under ``out``."""
    config = json.loads((model_dir / "config.json").read_text())
    heads, head_dim = config["num_attention_heads"], config["hidden_size"] // config["num_attention_heads"]
    cells = code_cells(code / "OLMoE_view_knowledge.ipynb")
    setup = substitute(cells[0], "LAYER_NUM = 16", f"LAYER_NUM = {config['num_hidden_layers']}")
    setup = substitute(setup, "HEAD_NUM = 16", f"HEAD_NUM = {heads}")
    setup = substitute(setup, "HEAD_DIM = 128", f"HEAD_DIM = {head_dim}")
    setup = substitute(setup, 'torch.set_default_device("cuda:3")', 'torch.set_default_device("cpu")')
    load = substitute(cells[2], 'modelname = "your own model dir"', f"modelname = {str(model_dir)!r}")
    if variant == "causal":
        call = "OlmoeForCausalLM.from_pretrained(modelname)"
        load = substitute(load, call, call[:-1] + ', attn_implementation="eager")')
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)  # the cells write to the relative folder Output_Dir/<n>/
    ns: dict = {"__name__": "__notebook__"}
    for i, source in enumerate([setup, cells[1], load]):
        exec(compile(source, f"cell{i}", "exec"), ns)  # noqa: S102 - the pinned, hash-verified notebook
    import matplotlib.pyplot as plt

    extras = {"attn_implementation": ns["model"].config._attn_implementation, "prompts": {}}
    head_cell = next(c for c in cells if c.startswith(HEAD_CELL))
    for n, prompt in enumerate(prompts):
        parameters = '{"test_sentence": "The capital of France is", "n":1}'
        ns_cells = [substitute(cells[3], parameters, repr({"test_sentence": prompt, "n": n})), *cells[4:]]
        for i, source in enumerate(ns_cells, start=3):
            exec(compile(source, f"cell{i}", "exec"), ns)  # noqa: S102
        ns["round"] = lambda x, ndigits=None: x
        exec(compile(head_cell, "head-level, unrounded", "exec"), ns)  # noqa: S102
        del ns["round"]
        exec(compile(SUMMED_ATTENTION_NEURONS, "summed attention neurons", "exec"), ns)  # noqa: S102
        extras["prompts"][n] = {
            "prompt": prompt,
            "input_ids": ns["indexed_tokens"],
            "predict_index": ns["predict_index"],
            "final_logits": ns["predictions"][0][-1].tolist(),
            "heads_unrounded": ns["all_head_increase"],
            "summed_attn_neurons": ns["summed_attn_neurons"],
            "later_weight": later_weight(ns["all_attn_scores"]),
        }
        plt.close("all")
    (out / "extras.json").write_text(json.dumps(extras))


def olmo_demo(code: Path, model_dir: Path, prompts: list[str], out: Path) -> None:
    """The patched OLMo file's forward pass as the notebook loads it vs with eager (causal) attention."""
    load_patched(code, "olmo")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    released = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    causal = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for prompt in prompts:
        ids = torch.tensor([tokenizer.encode(prompt)])  # as the notebook tokenises
        with torch.no_grad():
            a, b = released(ids), causal(ids)
        rows.append(
            {
                "prompt": prompt,
                "later_weight": later_weight([layer[7] for layer in a[1]]),
                "logit_diff_at_t": float((a[0][0, -1] - b[0][0, -1]).abs().max()),
                "top1_released": int(a[0][0, -1].argmax()),
                "top1_causal": int(b[0][0, -1].argmax()),
            }
        )
    # The notebook's projection reads the final norm's weight; OLMo's LayerNorm has none.
    cells = code_cells(code / "OLMo_view_knowledge.ipynb")
    ns: dict = {"__name__": "__notebook__"}
    setup = substitute(cells[0], 'torch.set_default_device("cuda:4")', 'torch.set_default_device("cpu")')
    for source in (setup, cells[1]):
        exec(compile(source, "olmo cell", "exec"), ns)  # noqa: S102
    try:
        ns["get_bsvalues"](torch.zeros(released.config.hidden_size), released, torch.ones(1))
        phi_error = None
    except Exception as exc:  # noqa: BLE001 - recorded as the demonstration's result
        phi_error = f"{type(exc).__name__}: {exc}"
    result = {
        "attn_implementation": released.config._attn_implementation,
        "prompts": rows,
        "phi_error": phi_error,
    }
    (out / "olmo_demo.json").write_text(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag in ("--code", "--olmoe", "--olmo", "--out"):
        parser.add_argument(flag, type=Path, required=True)
    parser.add_argument("--prompts", type=Path, required=True)
    parser.add_argument("--variant", choices=("released", "causal", "olmo"), required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    prompts = json.loads(args.prompts.read_text())
    code, olmoe, olmo, out = (p.resolve() for p in (args.code, args.olmoe, args.olmo, args.out))
    import transformers

    if transformers.__version__ != "4.46.3":
        raise SystemExit(f"needs transformers 4.46.3, found {transformers.__version__}")
    if args.variant == "olmo":
        olmo_demo(code, olmo, prompts, out)
        return
    module = load_patched(code, "olmoe")
    from transformers import OlmoeForCausalLM

    if sys.modules[OlmoeForCausalLM.__module__] is not module:
        raise SystemExit("transformers did not pick up the released modeling_olmoe.py")
    run_olmoe_notebook(code, olmoe, prompts, args.variant, out / args.variant)


if __name__ == "__main__":
    main()
