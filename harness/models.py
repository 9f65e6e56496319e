"""Model registry: harness names -> `timm.create_model` with image-size-aware kwargs.

Every entry is a real timm architecture. The full models (resnet50, efficientnet_b3, vit_base,
swin_tiny) have a same-family CPU stand-in registered under its own name (`CPU_VARIANT`); the
harness never runs a stand-in under the full model's name.

Any other name in `timm.list_models()` runs as named (no stand-in): `get_model_entry` makes its entry,
its family and size rule told from its timm module (`families.py`), or from the user (`ModelName`,
`--family`) where the module cannot tell.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import UserError, close_matches
from harness.families import FAMILIES, REGISTRY_WHY, is_timm_name, kind_of, module_of, patch_of

if TYPE_CHECKING:  # torch is imported where a model is built: the registry and labels do not need it
    import torch


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str  # resnet | efficientnet | vit | swin: picks its own recipe and the doctor's rules ("" = not told)
    timm_name: str
    description: str
    fixed: dict = field(default_factory=dict)  # timm kwargs that define the variant (widths, depths)
    grid: int = 8  # ViT: patches per side on images smaller than 224 px
    # A plugin's own model (harness/plugins.py): called with num_classes, image_size, in_chans,
    # drop_rate and drop_path_rate instead of timm.create_model(timm_name, ...).
    factory: Callable[..., torch.nn.Module] | None = field(default=None, compare=False)
    shape: str = ""  # the size rule (families.SHAPES) when it is not the family's own: ConvNeXt is sized as a CNN
    why: str = ""  # why this family: a by-name timm model's module, or the user's --family
    by_name: bool = False  # a timm name outside the registry: run as named, native size above 224 px

    @property
    def shape_rule(self) -> str:
        """vit (patch grid) | swin (patch and window) | cnn (stride-32 floor) | native (its own input size)."""
        return self.shape or {"vit": "vit", "swin": "swin", "resnet": "cnn", "efficientnet": "cnn"}.get(self.family, "cnn")

    def size_warning(self, image_size: int) -> str | None:
        """Below its family's floor a model still builds but is not the architecture it is named for."""
        floor = None if self.factory is not None or self.shape_rule != "cnn" else MIN_IMAGE_SIZE
        if floor is None or image_size >= floor:
            return None
        return (f"{self.name} at {image_size} px is below its family's floor of {floor} px: CNNs downsample 32x, so its "
                f"last stage sees a 1x1 map (3x3 convolutions on padding); use --image-size {floor} or more for a "
                f"result about the architecture")

    def size_kwargs(self, image_size: int) -> dict:
        """timm kwargs that make the architecture fit `image_size` (UserError if it cannot)."""
        if self.factory is not None:  # a plugin's model sizes itself
            return {}
        rule = self.shape_rule
        if self.by_name and rule in ("swin", "native"):
            from harness.families import input_side

            native = input_side(self.timm_name)
            if image_size == native:
                return {}
            if rule == "native" or image_size >= 224:
                # No size rule for this architecture (native), or a Swin above the small-image rule, whose own
                # window may not tile another size: it runs at the size timm defines it for.
                small = "" if rule == "native" else " or a small size (16, 32, 64, 128)"
                raise UserError("data.image_size", image_size, f"{self.name} runs at its own input size, {native} px"
                                f"{small}; use --image-size {native} (grids and studies: data.image_size: {native}).")
        if rule == "vit":
            patch = patch_of(self.timm_name) if image_size >= 224 else max(1, image_size // self.grid)
            if image_size % patch:
                raise UserError("data.image_size", image_size,
                                f"{self.name} needs an image size divisible by its patch size {patch}; try {image_size // patch * patch}.")
            return {"img_size": image_size, "patch_size": patch}
        if rule == "swin":
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
        least = CNN_LEAST.get(module_of(self.timm_name), 16) if self.by_name else 16
        if image_size < least:
            raise UserError("data.image_size", image_size, f"{self.name} downsamples 32x; use an image size of {least} or more.")
        return {}

    def describe(self, image_size: int) -> str:
        kw = self.size_kwargs(image_size)
        shape = ", ".join(f"{k}={v}" for k, v in kw.items() if k != "img_size")
        return f"{self.name} (timm {self.timm_name}{', ' + shape if shape else ''})"


# Smallest image where every stage of a CNN sees a real spatial map (stride 32 -> 1x1 at 32 px).
# Transformers have no floor here: their patch grid is fixed per image size (ModelEntry.grid).
MIN_IMAGE_SIZE = 32
# Below this a CNN does not build: ConvNeXt's downsampling convolutions are unpadded 2x2 (stem 4x4), so
# a 16 px image reaches its last stage at 0 px; padded CNNs (ResNet, EfficientNet) build from 16 px.
CNN_LEAST = {"convnext": 32}
# A by-name timm ViT's patch grid below 224 px: 4x4 patches, the registry's CPU-size ViTs' (vit_tiny,
# vit_test): 16 tokens keep a CPU epoch on digits in seconds (at 8x8, deit_tiny's is a minute here).
BY_NAME_VIT_GRID = 4
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
# timm's own test-size networks (timm/models/resnet.py, efficientnet.py, vision_transformer.py: `test_*`):
# the real architectures at a few hundred thousand parameters, for smoke runs and this project's tests,
# where a ResNet-18's 45 MB of weights per checkpoint would be most of a run's time.
register(ModelEntry("resnet_test", "resnet", "test_resnet", "timm's test-size ResNet, 0.37M params (smoke runs)"))
register(ModelEntry("vit_test", "vit", "test_vit", "timm's test-size ViT: width 64, depth 6 (smoke runs)", grid=4))
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


def stands_for(name: str) -> str | None:
    """The full model a CPU stand-in stands for ('vit_tiny' -> 'vit_base'), None for any other model."""
    return next((full for full, small in CPU_VARIANT.items() if small == name), None)


def resolve_scale(model: str, scale: str, *, cuda: bool) -> tuple[str, str | None]:
    """(the model that runs, the full model it stands for or None). `tiny` runs the CPU stand-in, `full` the
    model asked for, `auto` the full model where CUDA is and the stand-in where it is not."""
    full = scale == "full" or (scale == "auto" and cuda)
    ran = model if full else CPU_VARIANT.get(model, model)
    return ran, (model if ran != model else None)


def stand_in_label(model: str, stands_for: str | None, *, short: bool = False) -> str:
    """What ran, honestly: 'vit_tiny (CPU stand-in for vit_base)', or the model alone when it is no
    stand-in. `short` is the table-cell form, 'vit_tiny (for vit_base)', where a column header or
    legend already says stand-in. `stands_for` may be a NaN read back from a database column."""
    if not (isinstance(stands_for, str) and stands_for):
        return model
    return f"{model} ({'for' if short else 'CPU stand-in for'} {stands_for})"


class ModelName(str):
    """A model's name with the family its user gave (`--family`, `model: {name: ..., family: ...}`): a str
    everywhere a name goes, so the family travels with the name to every lookup in this process."""

    family: str | None

    def __new__(cls, name: str, family: str | None = None) -> ModelName:
        self = super().__new__(cls, name)
        self.family = family
        return self

    def __reduce__(self):  # pickled (Ray, a spec) with its family
        return (ModelName, (str(self), self.family))


# Families given on the command line or to the Python API (--family MODEL=FAMILY), for the command that
# runs now: `declared_families` sets them and takes them back when the command ends.
_DECLARED: dict[str, str] = {}


@contextlib.contextmanager
def declared_families(families: dict[str, str]) -> Iterator[None]:
    """Within the block, `get_model_entry` (and a grid's or study's model field) gives each named model the
    family given for it; outside it, none (a notebook's next call starts clean)."""
    saved = dict(_DECLARED)
    _DECLARED.update(families)
    try:
        yield
    finally:
        _DECLARED.clear()
        _DECLARED.update(saved)


def declared_family(name: str) -> str | None:
    return getattr(name, "family", None) or _DECLARED.get(str(name))


def family_fix(name: str, field: str) -> str:
    """How to say a model's family, in the words of the place it was named."""
    return (f"say it: --family {name}=FAMILY on the command line, or model: {{name: {name}, family: FAMILY}} in a grid "
            f"or study (FAMILY one of {', '.join(FAMILIES)}; docs/models.md says which fits what)")


def get_model_entry(name: str, field: str | None = None) -> ModelEntry:
    """The registry's entry, or a by-name timm model's (`families.py`). With a `field` (where the name was
    given: validation), a model whose family cannot be told and was not given is refused, naming the fix;
    without one (building a model whose recipe was resolved already), its family is "" and it still builds."""
    declared = declared_family(name)
    if declared is not None and declared not in FAMILIES:
        raise UserError("--family" if field is None or field.startswith("--") else f"{field}.family", declared,
                        f"Unknown family. {close_matches(declared, FAMILIES)}")
    if name in MODELS:
        entry = MODELS[name]
        if declared is None or declared == entry.family:
            return entry
        raise UserError("--family" if field is None or field.startswith("--") else f"{field}.family", declared,
                        f"{name} is harness's registry model of family {entry.family}; its family is not changed. To "
                        f"train it with another family's recipe, name the recipe (--recipe {family_recipe(declared)}).")
    if not is_timm_name(name):
        raise UserError(field or "model", str(name), f"Unknown name. {near_names(str(name))}Not in harness's registry "
                        "(`harness models`) nor in timm.list_models(); list timm's with timm.list_models('*pattern*').")
    return _by_name(str(name), declared, field)


def near_names(name: str) -> str:
    """'Did you mean ...? ' from the registry first, then timm's names ('' when nothing is close)."""
    import difflib

    from harness.families import timm_names

    near = difflib.get_close_matches(name, list(MODELS), n=3, cutoff=0.5)
    near += [n for n in difflib.get_close_matches(name, list(timm_names()), n=3, cutoff=0.6) if n not in near]
    return f"Did you mean {' or '.join(repr(n) for n in near[:4])}? " if near else ""


def family_recipe(family: str) -> str:
    from harness.recipes import FAMILY_RECIPES

    return FAMILY_RECIPES[family]


@functools.lru_cache(maxsize=256)
def _by_name(name: str, declared: str | None, field: str | None) -> ModelEntry:
    kind = kind_of(name)
    if declared is not None:
        shape = kind.shape if kind is not None else "native"
        why = f"given (--family / model.family){'' if kind is None else f'; timm module {module_of(name)} says {kind.family}'}"
        family = declared
    elif kind is not None:
        family, shape, why = kind.family, kind.shape, kind.why
    elif field is not None:
        raise UserError(field, name, f"harness cannot tell which recipe family {name} belongs to (timm module "
                        f"{module_of(name)} is none it knows); {family_fix(name, field)}.")
    else:
        family, shape, why = "", "native", f"timm module {module_of(name)}: family not told"
    return ModelEntry(name, family, name, f"timm {name} (module {module_of(name)}), run as named", shape=shape, why=why,
                      by_name=True, grid=BY_NAME_VIT_GRID)


def family_why(name: str) -> str:
    """Why `name` gets its family: the registry's, its timm module's, or the user's."""
    entry = get_model_entry(name)
    return entry.why or REGISTRY_WHY


def build_model(name: str, *, num_classes: int, image_size: int, drop_path_rate: float = 0.0,
                drop_rate: float = 0.0, pretrained: bool = False, pretrained_file: Path | None = None,
                in_chans: int = 3, log: Callable[[str], None] = lambda s: None) -> torch.nn.Module:
    """A timm model sized for `image_size`. Pretrained weights come from timm's hub or a local file
    (`load_file_weights`); either way they are adapted as timm adapts its own (a new classifier when the
    classes differ, patch embedding and position embeddings resampled to this image size). What a file
    needed adapting goes to `log`."""
    import timm
    import torch

    entry = get_model_entry(name)
    if entry.factory is not None:
        if pretrained or pretrained_file is not None:
            field = "--pretrained-file" if pretrained_file is not None else "--pretrained"
            raise UserError(field, name, f"{name} is a plugin's model; load its weights in its factory.")
        return entry.factory(num_classes=num_classes, image_size=image_size, in_chans=in_chans,
                             drop_rate=drop_rate, drop_path_rate=drop_path_rate)
    kwargs = {**entry.fixed, **entry.size_kwargs(image_size), "num_classes": num_classes, "in_chans": in_chans,
              "drop_rate": drop_rate, "drop_path_rate": drop_path_rate}
    state = read_state_dict(pretrained_file) if pretrained_file is not None else None  # a bad file fails before a build
    if state is None and pretrained and entry.fixed:
        raise UserError("--pretrained", name, f"{name} is not a published size and has no pretrained weights; use swin_tiny.")
    hub = pretrained and state is None
    try:
        model = timm.create_model(entry.timm_name, pretrained=hub, **kwargs)
    except (OSError, RuntimeError) as e:
        if hub:
            from huggingface_hub.constants import HF_HUB_CACHE

            raise UserError("--pretrained", name,
                            f"timm's weights for {entry.timm_name} are not in the Hugging Face cache ({HF_HUB_CACHE}) and "
                            f"could not be fetched ({type(e).__name__}; offline?). Download them where there is a network "
                            "(they land in that cache), or give a state dict instead: --pretrained-file PATH "
                            "(grids and studies: pretrained: {model: PATH}).") from None
        raise
    new_head = True  # from scratch, or timm's hub weights (1000 classes) under a smaller head
    if state is not None:
        new_head = load_file_weights(model, entry, state, source=str(pretrained_file), log=log)
    if _timm_module(entry) == "efficientnet" and num_classes < TF_HEAD_INIT_CLASSES and new_head:
        bound = 1.0 / TF_HEAD_INIT_CLASSES ** 0.5
        with torch.no_grad():
            model.get_classifier().weight.uniform_(-bound, bound)
    return model


def hub_weights_cached(name: str) -> tuple[bool, str]:
    """Whether timm's own weights for registry model `name` are in the local Hugging Face cache (harness
    never downloads at run time: a trial would wait on the network, and these machines have none), and the
    repository and cache folder looked in."""
    import huggingface_hub
    from huggingface_hub.constants import HF_HUB_CACHE
    from timm.models import get_pretrained_cfg

    entry = get_model_entry(name)
    cfg = get_pretrained_cfg(entry.timm_name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return False, f"no Hugging Face repository for {entry.timm_name} in timm"
    found = any(isinstance(huggingface_hub.try_to_load_from_cache(repo, f), str)
                for f in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"))
    return found, f"{repo} in {HF_HUB_CACHE}"


def check_weights(runs: Any) -> None:
    """Every distinct (model, weights, image size) of a grid or study built once, before Ray starts: a
    missing or foreign file, or timm's weights out of reach offline, is one UserError and no row."""
    seen: set[tuple] = set()
    for r in runs:
        key = (r.model, r.pretrained, r.pretrained_file, r.data.image_size)
        if not (r.pretrained or r.pretrained_file) or key in seen:
            continue
        seen.add(key)
        if r.pretrained and r.pretrained_file is None:
            found, where = hub_weights_cached(r.model)
            if not found:
                raise UserError("--pretrained", r.model, f"timm's weights for {r.model} are not in the local Hugging Face "
                                f"cache (looked for {where}); harness does not download at run time. Fetch them once "
                                f"where there is a network (python -c \"import timm; timm.create_model("
                                f"'{get_model_entry(r.model).timm_name}', pretrained=True)\"), or give a state dict: "
                                "--pretrained-file PATH (grids and studies: pretrained: {model: PATH}).")
        build_model(r.model, num_classes=2, image_size=r.data.image_size, pretrained=r.pretrained,
                    pretrained_file=r.pretrained_file)


def weights_tag(model: str, *, pretrained: bool, pretrained_file: Path | None) -> str | None:
    """What a run starts from, as its row records it: 'timm:<timm name>' or '<file name> sha256:<16 hex>'
    (None for a missing file: `check_weights` refuses it)."""
    if pretrained_file is not None:
        if not Path(pretrained_file).is_file():
            return None
        return f"{Path(pretrained_file).name} sha256:{_digest(str(pretrained_file), *_stat(pretrained_file))}"
    return f"timm:{get_model_entry(model).timm_name}" if pretrained else None


def _stat(path: Path) -> tuple[int, int]:
    st = Path(path).stat()
    return st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=64)
def _digest(path: str, mtime_ns: int, size: int) -> str:
    """A file's sha256 prefix, read once per version of the file (a grid names it once per run)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__


def read_state_dict(path: Path, field: str = "--pretrained-file") -> dict[str, torch.Tensor]:
    """The tensors of a local weights file, read by timm's own reader: `.safetensors`, or anything
    `torch.save` wrote (loaded with weights_only=True; of a training checkpoint, its `state_dict_ema`,
    `model_ema`, `state_dict` or `model` entry, so a harness checkpoint works too; `module.` prefixes of
    DataParallel dropped). UserError naming the file and the fix when it is none of these."""
    import torch
    from timm.models import load_state_dict

    fix = "save one with torch.save(model.state_dict(), PATH) or safetensors.torch.save_file(model.state_dict(), PATH)."
    if not Path(path).is_file():
        raise UserError(field, str(path), f"No such file; give the path of a .pth/.safetensors state dict ({fix[:-1]}).")
    try:
        state = load_state_dict(str(path))
    except Exception as e:  # pickle, zip, safetensors header or a non-dict: whatever the reader chokes on, it is the file
        if "Unsupported global" in str(e):  # torch.save(model): code to run on load, which weights_only refuses
            raise UserError(field, str(path), "Holds pickled Python objects (a whole model?), which are not loaded "
                            f"(torch.load(weights_only=True) runs no code from a file); {fix}") from None
        raise UserError(field, str(path), f"Not a readable state dict ({_first_line(e)}); {fix}") from None
    if not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(field, str(path), f"Holds no tensors by name (not a state dict); {fix}")
    return dict(state)


# timm's adapters for its own checkpoints of these families made at another image size: ViT resamples
# the patch embedding and the position embeddings, Swin the patch embedding and relative-position tables.
# CNN weights fit any image size as they are.
FILE_FILTERS = {"vit": "timm.models.vision_transformer:checkpoint_filter_fn",
                "swin": "timm.models.swin_transformer:checkpoint_filter_fn"}


def _timm_module(entry: ModelEntry) -> str | None:
    """The timm module that defines `entry`'s architecture (None for a plugin's model)."""
    return module_of(entry.timm_name) if entry.factory is None and is_timm_name(entry.timm_name) else None


def file_filter(entry: ModelEntry) -> str | None:
    """timm's adapter for weights made at another image size: the registry's per family; a by-name ViT's or
    Swin's from its own module (deit, eva, beit, swin_transformer_v2 each define one)."""
    if entry.by_name:
        return f"timm.models.{module_of(entry.timm_name)}:checkpoint_filter_fn" if entry.shape_rule in ("vit", "swin") else None
    return FILE_FILTERS.get(entry.family)
RESAMPLED_NAMES = {"pos_embed": "position embeddings", "patch_embed.proj.weight": "patch embedding"}


def load_file_weights(model: torch.nn.Module, entry: ModelEntry, state: dict[str, torch.Tensor], *,
                      source: str, log: Callable[[str], None] = lambda s: None) -> bool:
    """Load `state` (a file's tensors) into `model` the way timm loads its hub weights, with the checks
    timm leaves out: every tensor of the model except the classifier must come from the file, in its
    shape, and the file must hold nothing else (timm loads non-strictly once the classes differ, so a
    ResNet file in a ViT run would silently train from scratch). The classifier is loaded when its shape
    matches, else replaced by the model's new one, and `log` says so. Returns True when the head is new."""
    import importlib

    field = "--pretrained-file"
    what = f"{entry.name} (timm {entry.timm_name}{', ' + str(entry.fixed) if entry.fixed else ''})"
    fix = (f"give a state dict of timm.create_model({entry.timm_name!r}{''.join(f', {k}={v!r}' for k, v in entry.fixed.items())}) "
           f"(any number of classes{'; any image size' if file_filter(entry) else ''}).")
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    if file_filter(entry):
        module, _, fn = file_filter(entry).partition(":")
        try:
            state = getattr(importlib.import_module(module), fn)(state, model)
        except Exception as e:  # timm's adapter met tensors it cannot resample: not this family's weights
            raise UserError(field, source, f"Not weights for {what}: timm could not adapt them ({_first_line(e)}); {fix}") from None
    own = model.state_dict()
    heads = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)  # timm's name for the head: fc, head, classifier, head.fc
    head_keys = {f"{h}.{p}" for h in heads for p in ("weight", "bias")} & set(own)
    head_fits = all(k in state and state[k].shape == own[k].shape for k in head_keys)
    missing = sorted(set(own) - set(state) - head_keys)
    extra = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) - head_keys if state[k].shape != own[k].shape)
    if missing or extra or wrong:
        problems = []
        if missing:
            problems.append(f"{len(missing)} of its {len(own)} tensors are not in the file (e.g. {', '.join(missing[:3])})")
        if extra:
            problems.append(f"{len(extra)} in the file are not its (e.g. {', '.join(extra[:3])})")
        if wrong:
            problems.append(f"{len(wrong)} differ in shape (e.g. {wrong[0]}: {tuple(state[wrong[0]].shape)} in the file, "
                            f"{tuple(own[wrong[0]].shape)} in the model)")
        raise UserError(field, source, f"Not weights for {what}: {'; '.join(problems)}; {fix}")
    if not head_fits:
        weight = next((k for k in sorted(head_keys) if k.endswith(".weight")), None)
        had = f"its {state[weight].shape[0]}-class head" if weight in state else "it has no classifier, so"
        state = {k: v for k, v in state.items() if k not in head_keys}
        log(f"--pretrained-file: {had} ({', '.join(heads)}) is replaced by a new {own[weight].shape[0]}-class head, "
            "trained from scratch; every other weight is the file's")
    resampled = [f"{RESAMPLED_NAMES.get(k, k)} {shapes[k]} -> {tuple(v.shape)}" for k, v in state.items()
                 if k in shapes and shapes[k] != tuple(v.shape)]
    if resampled:
        log(f"--pretrained-file: weights made at another image size, resampled by timm to this one: {'; '.join(resampled)}")
    model.load_state_dict(state, strict=head_fits)
    return not head_fits


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
