"""Model registry: harness names -> `timm.create_model` with image-size-aware kwargs.

Every entry is a real timm architecture. The full models (resnet50, efficientnet_b3, vit_base,
swin_tiny) have a same-family CPU stand-in registered under its own name (`CPU_VARIANT`); the
harness never runs a stand-in under the full model's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import UserError, unknown

if TYPE_CHECKING:  # torch is imported where a model is built: the registry and labels do not need it
    import torch


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str  # resnet | efficientnet | vit | swin: picks the tuned recipe and the doctor's rules
    timm_name: str
    description: str
    fixed: dict = field(default_factory=dict)  # timm kwargs that define the variant (widths, depths)
    grid: int = 8  # ViT: patches per side on images smaller than 224 px
    # A plugin's own model (harness/plugins.py): called with num_classes, image_size, in_chans,
    # drop_rate and drop_path_rate instead of timm.create_model(timm_name, ...).
    factory: Callable[..., torch.nn.Module] | None = field(default=None, compare=False)

    def size_warning(self, image_size: int) -> str | None:
        """Below its family's floor a model still builds but is not the architecture it is named for."""
        floor = None if self.factory is not None else MIN_IMAGE_SIZE.get(self.family)
        if floor is None or image_size >= floor:
            return None
        return (f"{self.name} at {image_size} px is below its family's floor of {floor} px: CNNs downsample 32x, so its "
                f"last stage sees a 1x1 map (3x3 convolutions on padding); use --image-size {floor} or more for a "
                f"result about the architecture")

    def size_kwargs(self, image_size: int) -> dict:
        """timm kwargs that make the architecture fit `image_size` (UserError if it cannot)."""
        if self.factory is not None:  # a plugin's model sizes itself
            return {}
        if self.family == "vit":
            patch = 16 if image_size >= 224 else max(1, image_size // self.grid)
            if image_size % patch:
                raise UserError("data.image_size", image_size,
                                f"{self.name} needs an image size divisible by its patch size {patch}; try {image_size // patch * patch}.")
            return {"img_size": image_size, "patch_size": patch}
        if self.family == "swin":
            # Swin: 4 stages, each halving the token grid, so the grid must divide by 8; the
            # attention window must divide each stage's grid (timm shrinks it on the last stages).
            patch, window = (4, 7) if image_size >= 224 else (2 if image_size <= 64 else 4, 4)
            grid = image_size // patch
            if image_size % patch or grid % 8:
                ok = [s for s in (16, 32, 64, 128, 224) if s != image_size]
                raise UserError("data.image_size", image_size,
                                f"{self.name} needs (image size / patch {patch}) divisible by 8 (4 stages of patch merging); "
                                f"use one of {ok}.")
            return {"img_size": image_size, "patch_size": patch, "window_size": window}
        if image_size < 16:
            raise UserError("data.image_size", image_size, f"{self.name} downsamples 32x; use an image size of 16 or more.")
        return {}

    def describe(self, image_size: int) -> str:
        kw = self.size_kwargs(image_size)
        shape = ", ".join(f"{k}={v}" for k, v in kw.items() if k != "img_size")
        return f"{self.name} (timm {self.timm_name}{', ' + shape if shape else ''})"


# Smallest image where every stage of the family sees a real spatial map (stride 32 -> 1x1 at 32 px).
# Transformers have no floor here: their patch grid is fixed per image size (ModelEntry.grid).
MIN_IMAGE_SIZE = {"resnet": 32, "efficientnet": 32}
# timm initialises EfficientNet's classifier TF-style, uniform(+-1/sqrt(num_classes)): at 1000
# classes that is +-0.03; at 10 classes +-0.32, initial logits 10x larger (on digits: initial loss
# 5.4 instead of ln 10 = 2.3, first grad norm ~400 instead of ~33). The head is initialised as at
# ImageNet's 1000 classes instead, the scale the rest of timm's init was designed around.
TF_HEAD_INIT_CLASSES = 1000

MODELS: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    MODELS[entry.name] = entry
    return entry


register(ModelEntry("resnet50", "resnet", "resnet50", "ResNet-50, 25.6M params"))
register(ModelEntry("resnet18", "resnet", "resnet18", "ResNet-18, CPU stand-in for ResNet-50"))
register(ModelEntry("efficientnet_b3", "efficientnet", "efficientnet_b3", "EfficientNet-B3"))
register(ModelEntry("efficientnet_b0", "efficientnet", "efficientnet_b0", "EfficientNet-B0, CPU stand-in for B3"))
register(ModelEntry("vit_base", "vit", "vit_base_patch16_224", "ViT-Base/16: width 768, depth 12, 12 heads"))
register(ModelEntry("vit_small", "vit", "vit_small_patch16_224", "ViT-Small/16: width 384, depth 12, 6 heads"))
# ViT-Tiny on a 4x4 patch grid below 224 px: 16 tokens keep a CPU epoch on digits in seconds.
register(ModelEntry("vit_tiny", "vit", "vit_tiny_patch16_224",
                    "ViT-Tiny: width 192, depth 12, 3 heads; CPU stand-in for ViT-Base", grid=4))
register(ModelEntry("swin_tiny", "swin", "swin_tiny_patch4_window7_224", "Swin-T: width 96, depths 2-2-6-2"))
# No Swin smaller than Tiny exists in timm; this is Swin-T's architecture at half width and
# depths 2-2-2-2, named for what it is. It has no pretrained weights.
register(ModelEntry("swin_nano", "swin", "swin_tiny_patch4_window7_224",
                    "Swin at width 48, depths 2-2-2-2 (not a published size); CPU stand-in for Swin-T",
                    fixed={"embed_dim": 48, "depths": (2, 2, 2, 2), "num_heads": (2, 4, 8, 16)}))

# The four models of `--models all`, and their CPU stand-ins for `--scale tiny`.
ALL = ("resnet50", "efficientnet_b3", "vit_base", "swin_tiny")
CPU_VARIANT = {"resnet50": "resnet18", "efficientnet_b3": "efficientnet_b0", "vit_base": "vit_tiny",
               "swin_tiny": "swin_nano"}


def stand_in_label(model: str, stands_for: str | None, *, short: bool = False) -> str:
    """What ran, honestly: 'vit_tiny (CPU stand-in for vit_base)', or the model alone when it is no
    stand-in. `short` is the table-cell form, 'vit_tiny (for vit_base)', where a column header or
    legend already says stand-in. `stands_for` may be a NaN read back from a database column."""
    if not (isinstance(stands_for, str) and stands_for):
        return model
    return f"{model} ({'for' if short else 'CPU stand-in for'} {stands_for})"


def get_model_entry(name: str, field: str = "model") -> ModelEntry:
    if name not in MODELS:
        raise unknown(field, name, MODELS)
    return MODELS[name]


def build_model(name: str, *, num_classes: int, image_size: int, drop_path_rate: float = 0.0,
                drop_rate: float = 0.0, pretrained: bool = False, pretrained_file: Path | None = None,
                in_chans: int = 3) -> torch.nn.Module:
    """A timm model sized for `image_size`. Pretrained weights come from timm's hub or a local file;
    timm adapts them (new classifier, resampled patch embedding and position embeddings)."""
    import timm
    import torch

    entry = get_model_entry(name)
    if entry.factory is not None:
        if pretrained or pretrained_file is not None:
            raise UserError("--pretrained", name, f"{name} is a plugin's model; load its weights in its factory.")
        return entry.factory(num_classes=num_classes, image_size=image_size, in_chans=in_chans,
                             drop_rate=drop_rate, drop_path_rate=drop_path_rate)
    kwargs = {**entry.fixed, **entry.size_kwargs(image_size), "num_classes": num_classes, "in_chans": in_chans,
              "drop_rate": drop_rate, "drop_path_rate": drop_path_rate}
    if pretrained_file is not None:
        if not Path(pretrained_file).is_file():
            raise UserError("--pretrained-file", str(pretrained_file), "No such file; give the path of a .pth/.safetensors state dict.")
        if entry.fixed:
            raise UserError("--pretrained-file", str(pretrained_file), f"{name} is not a published size and has no weights to load.")
        kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained_file)}
        pretrained = True
    elif pretrained and entry.fixed:
        raise UserError("--pretrained", name, f"{name} is not a published size and has no pretrained weights; use swin_tiny.")
    try:
        model = timm.create_model(entry.timm_name, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError) as e:
        if pretrained_file is not None:
            raise UserError("--pretrained-file", str(pretrained_file),
                            f"could not load it as {entry.timm_name} weights ({str(e).splitlines()[0][:160]}).") from None
        if pretrained:
            raise UserError("--pretrained", name,
                            f"could not fetch timm's weights for {entry.timm_name} ({type(e).__name__}; offline?). "
                            "Download them elsewhere and pass --pretrained-file PATH.") from None
        raise
    if entry.family == "efficientnet" and num_classes < TF_HEAD_INIT_CLASSES:
        bound = 1.0 / TF_HEAD_INIT_CLASSES ** 0.5
        with torch.no_grad():
            model.get_classifier().weight.uniform_(-bound, bound)
    return model


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_gflops(model: torch.nn.Module, image_size: int, in_chans: int = 3) -> float:
    """Forward FLOPs for one image (2 x multiply-accumulates), counted by torch's FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, in_chans, image_size, image_size, device=next(model.parameters()).device))
    model.train(was_training)
    return counter.get_total_flops() / 1e9
