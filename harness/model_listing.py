"""`harness models`, and the counts behind it: each registry model's parameters and forward GFLOPs, read
from the shipped table (`families.py`'s `model_facts.json`: no torch, no timm, instant) at its size, or
counted on torch's meta device at another; and the writer that regenerates that table from the installed
timm (`python -m harness.model_listing`). Its own module: it builds models (`models.py`) and reads the
table (`families.py`), which `models.py` itself needs, so neither of those imports back here."""

from __future__ import annotations

import json
from pathlib import Path

from harness.errors import UserError
from harness.families import FACTS_FILE, FACTS_IMAGE_SIZE, facts, registry_counts
from harness.models import MODELS, build_model, count_params, stands_for


def describe_registry(image_size: int, *, width: int) -> list[str]:
    """`harness models`: one row per model (name, family, parameters, forward GFLOPs at `image_size`),
    then what each is built as and what it is for, wrapped at `width` columns. The counts at the default
    size are the shipped table's (`families.py`: no torch, no timm, no build); at another size they are
    counted on torch's meta device (no weights made; the import of torch and timm is most of the time)."""
    import textwrap

    rows, notes = [], []
    for name, entry in MODELS.items():
        try:
            shape = entry.describe(image_size)
            counts = registry_counts(name) if image_size == FACTS_IMAGE_SIZE and entry.factory is None else None
            if counts is not None:
                params, gflops = counts["params"], counts["gflops"]
            else:
                params, gflops = count_on_meta(name, image_size)
            params, gflops = f"{params / 1e6:.1f}M", f"{gflops:.3f}"
        except UserError as e:
            params, gflops, shape = "-", "-", f"not at {image_size} px: {e.fix}"
        rows.append((name, entry.family, params, gflops))
        note = f"CPU stand-in for {full}" if (full := stands_for(name)) else entry.description
        notes.append(textwrap.fill(f"{name}: {shape}; {note}", width=width, subsequent_indent="    "))
    header = ("name", "family", "params", f"GFLOPs@{image_size}")
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    table = [" ".join(str(v).rjust(w) for v, w in zip(r, widths)) for r in (header, *rows)]
    return [*table, "", *notes, "",
            textwrap.fill("Any other name in timm.list_models() also runs as named (e.g. --models convnext_tiny); its "
                          "recipe family is told from its timm module (docs/models.md), or given with --family.", width=width)]


# --- writing the table (imports timm and torch) ----------------------------------------------------

def count_on_meta(name: str, image_size: int) -> tuple[int, float]:
    """(parameters, forward GFLOPs for one image) of registry model `name` at `image_size`, built on torch's
    meta device: shapes only, no weights initialised, no arithmetic (vit_base in under a second instead of
    ten). The counts equal a real build's (the test builds the tiny ones to check)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_model(name, num_classes=10, image_size=image_size)
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size, device="meta"))
    return count_params(model), counter.get_total_flops() / 1e9


def write_facts(path: Path = FACTS_FILE) -> dict:
    """Regenerate the shipped table from the installed timm (run after upgrading timm)."""
    import timm
    from timm.models import get_pretrained_cfg, model_entrypoint

    models = {}
    for n in timm.list_models():
        cfg = get_pretrained_cfg(n)
        side = cfg.input_size[-1] if cfg is not None and getattr(cfg, "input_size", None) else 224
        models[n] = [model_entrypoint(n).__module__.rsplit(".", 1)[-1], int(side)]
    doc = {"timm": timm.__version__, "image_size": FACTS_IMAGE_SIZE, "registry": {}, "models": models}
    path.write_text(json.dumps(doc))  # the names first: building a registry model looks its module up here
    facts.cache_clear()
    registry = {}
    for name, entry in MODELS.items():
        if entry.factory is not None:  # a plugin's model is not shipped
            continue
        try:
            params, gflops = count_on_meta(name, FACTS_IMAGE_SIZE)
        except UserError:
            continue
        registry[name] = {"params": params, "gflops": round(gflops, 6)}
    doc["registry"] = registry
    # One model per line: an upgrade of timm reads as a diff of the names it added or moved.
    lines = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(models.items())]
    path.write_text(f'{{"timm": {json.dumps(doc["timm"])}, "image_size": {FACTS_IMAGE_SIZE},\n'
                    f'"registry": {json.dumps(registry, sort_keys=True)},\n"models": {{\n' + ",\n".join(lines) + "\n}}\n")
    facts.cache_clear()
    return doc


if __name__ == "__main__":
    written = write_facts()
    print(f"{FACTS_FILE}: {len(written['models'])} timm models (timm {written['timm']}), "
          f"{len(written['registry'])} registry counts at {FACTS_IMAGE_SIZE} px")
