"""Exercise 7: the checkpoint name map (mpnet.py, section 4).

    python -m exercises check names
"""
from mpnet import MPNetConfig


def checkpoint_names(cfg: MPNetConfig) -> dict[str, str]:
    """{tensor name in model.safetensors: parameter name in mpnet.MPNet}, every tensor the model uses.

    Contract:
      - every parameter of MPNet(cfg) is filled once, for cfg.num_hidden_layers layers (the check also
        asks for a 3-layer config);
      - the pooler and the saved position_ids buffer are not in the map (mpnet.SKIPPED says why).

    Hints:
      - List the checkpoint's names:
            from safetensors import safe_open
            with safe_open("weights/all-mpnet-base-v2/model.safetensors", "pt") as f: print(list(f.keys()))
        and this module's: [n for n, _ in MPNet(MPNetConfig()).named_parameters()].
      - The embeddings, LayerNorms and the relative attention bias have names of their own; each
        layer has q, k, v, o, two LayerNorms and two dense maps, each with a weight and a bias.
    """
    raise NotImplementedError
