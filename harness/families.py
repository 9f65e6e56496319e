"""Which recipe family a timm architecture belongs to, told from what it is, without building it.

Any name in `timm.list_models()` can be run by name. Its family picks the fitted recipe (`fitted`) and
the doctor's rules; its *shape rule* says how it is sized for small images (the registry's rules: a
ViT's patch grid, Swin's patch and window, a CNN's stride-32 floor). Both come from the timm module that
defines the architecture (`timm.models.<module>`, the module of its entry point): a module is one
architecture family in timm's layout (deit.py, eva.py, convnext.py...). The table below is the whole
mapping, each row with why; docs/models.md explains it. A module not in it cannot be told: the user
says the family (`--family`, or `model: {name: ..., family: ...}` in a grid or study).

The timm names, their modules and input sizes, and the registry's parameter and GFLOP counts are read
from `model_facts.json`, shipped beside this file and written by `python -m harness.model_listing` (which
imports timm and counts on the meta device): validation and `harness models` need neither torch nor
timm (importing them takes ~10 s). tests/test_models_by_name.py checks the file against the installed
timm.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

FACTS_FILE = Path(__file__).with_name("model_facts.json")
FACTS_IMAGE_SIZE = 32  # the size `harness models` counts at by default (the digits runs' size)

FAMILIES = ("resnet", "efficientnet", "vit", "swin")  # each has its own recipe (recipes.FAMILY_RECIPES)
SHAPES = ("vit", "swin", "cnn", "native")  # how a model is sized for an image size (models.ModelEntry.size_kwargs)


@dataclass(frozen=True)
class Kind:
    family: str  # the recipe family
    shape: str  # the size rule
    why: str  # one line a table can show


# timm module -> (family, shape rule, why). Recipes: recipes/catalogue.py (cnn = ResNet strikes back A3,
# effnet = timm's EfficientNet recipe, vit = DeiT, swin = Swin-T).
MODULES: dict[str, Kind] = {
    "vision_transformer": Kind("vit", "vit", "a ViT (timm vision_transformer): DeiT's recipe"),
    "deit": Kind("vit", "vit", "DeiT is a ViT; the vit recipe is DeiT's own"),
    "eva": Kind("vit", "vit", "EVA is a ViT (patch tokens, global attention): DeiT's recipe"),
    "beit": Kind("vit", "vit", "BEiT is a ViT (patch tokens, global attention): DeiT's recipe; vit_ft with weights"),
    "swin_transformer": Kind("swin", "swin", "Swin Transformer: the Swin-T recipe"),
    "swin_transformer_v2": Kind("swin", "swin", "Swin V2 trains with Swin's recipe (AdamW, 20 warmup epochs, clip 5)"),
    "convnext": Kind("swin", "cnn", "ConvNeXt is a CNN published with Swin-T's recipe (AdamW 5e-4 per 512, 20 of "
                                    "300 warmup epochs, wd 0.05, mixup/cutmix, RandAugment m9, erasing 0.25)"),
    "resnet": Kind("resnet", "cnn", "a ResNet (timm resnet: ResNet, ResNeXt, SE-ResNet...): ResNet strikes back A3"),
    "regnet": Kind("resnet", "cnn", "RegNet is a BatchNorm CNN of ResNet's kind: ResNet strikes back A3"),
    "efficientnet": Kind("efficientnet", "cnn", "timm's EfficientNet builder (EfficientNet, MixNet, MobileNetV2...): "
                                                "timm's EfficientNet recipe"),
}
# The registry's own entries say their family; shown as the why of a registry model.
REGISTRY_WHY = "harness's registry (harness models)"


@functools.lru_cache(maxsize=1)
def facts() -> dict:
    """The shipped table: {"timm": version, "models": {timm name: [module, input side]}, "registry":
    {name: {"params": n, "gflops": g}} at FACTS_IMAGE_SIZE}."""
    return json.loads(FACTS_FILE.read_text())


def timm_names() -> dict[str, list]:
    return facts()["models"]


def arch_name(name: str) -> str:
    """timm's architecture name: 'resnet50.a1_in1k' -> 'resnet50' (the tag names weights, not a model)."""
    return name.split(".", 1)[0]


def is_timm_name(name: str) -> bool:
    return arch_name(name) in timm_names()


def module_of(name: str) -> str:
    return timm_names()[arch_name(name)][0]


def input_side(name: str) -> int:
    return int(timm_names()[arch_name(name)][1])


def kind_of(name: str) -> Kind | None:
    """The family and shape rule of timm model `name`, from its module; None when the module is not one
    harness can tell (`MODULES`)."""
    return MODULES.get(module_of(name))


def patch_of(name: str, default: int = 16) -> int:
    """A ViT's own patch size, from timm's naming ('deit_tiny_patch16_224', 'eva02_tiny_patch14_224')."""
    m = re.search(r"patch(\d+)", arch_name(name))
    return int(m.group(1)) if m else default


def registry_counts(name: str) -> dict | None:
    return facts()["registry"].get(name)
