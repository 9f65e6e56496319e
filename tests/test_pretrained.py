"""`--pretrained-file` as users have it: a state dict timm saved (1000-class head, another image size,
.pth or .safetensors) starts a `harness train` run; a file that is missing, unreadable or another
architecture's is refused with exit code 2 before anything is written (harness/models.py)."""

from __future__ import annotations

import sqlite3

import pytest
import timm
import torch
from click.testing import CliRunner
from dbrows import rows
from safetensors.torch import load_file, save_file
from timm.layers import resample_abs_pos_embed, resample_patch_embed

from harness.cli import main
from harness.models import build_model

# Tiny runs: 64 synthetic images of 16 px, one epoch.
TINY = ["--data", "synthetic", "--train-size", "64", "--image-size", "16", "--epochs", "1", "--threads", "1",
        "--batch-size", "16"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """What users download or save with timm: resnet18 with its ImageNet head (.pth and .safetensors),
    and ViT-Tiny made at 32 px with 4-px patches (an 8x8 grid)."""
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    resnet = timm.create_model("resnet18", num_classes=1000).state_dict()
    torch.save(resnet, d / "resnet18.pth")
    save_file(resnet, str(d / "resnet18.safetensors"))
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, num_classes=1000).state_dict()
    torch.save(vit, d / "vit_tiny_32px.pth")
    return d


def train(db, *args):
    return CliRunner().invoke(main, ["train", "--db", db, *map(str, args), *TINY])


@pytest.mark.parametrize("ext", ["pth", "safetensors"])
def test_timm_imagenet_checkpoint_gets_a_new_head_and_says_so(ext, files, db_url, tmp_path):
    """A 1000-class resnet18 file in a 10-class run: trains, the head is new (and the run says so), every
    other weight is the file's."""
    path = files / f"resnet18.{ext}"
    r = train(db_url, "--model", "resnet18", "--pretrained-file", path, "--checkpoint-dir", tmp_path / "ck")
    assert r.exit_code == 0, r.output
    assert ("--pretrained-file: its 1000-class head (fc) is replaced by a new 10-class head, trained from scratch; "
            "every other weight is the file's") in r.output
    assert "epoch   1/1" in r.output
    (run,) = rows(db_url, "select model, status, epochs_done from runs")
    assert run == {"model": "resnet18", "status": "completed", "epochs_done": 1}

    notes = []
    model = build_model("resnet18", num_classes=10, image_size=16, pretrained_file=path, log=notes.append)
    saved = torch.load(files / "resnet18.pth", weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items() if not k.startswith("fc."))
    assert model.fc.weight.shape == (10, 512) and len(notes) == 1


def test_vit_checkpoint_at_another_image_size_is_resampled_and_used(files, db_url, tmp_path):
    """ViT-Tiny saved at 32 px (8x8 grid of 4-px patches) into a 16-px run (4x4 grid of 4-px patches):
    the position embeddings are resampled, as models.py promises; every other weight is the file's."""
    path = files / "vit_tiny_32px.pth"
    saved = torch.load(path, weights_only=True)
    notes = []
    model = build_model("vit_tiny", num_classes=10, image_size=16, pretrained_file=path, log=notes.append)
    assert torch.equal(model.patch_embed.proj.weight, saved["patch_embed.proj.weight"])  # same 4-px patches
    expected = resample_abs_pos_embed(saved["pos_embed"], new_size=(4, 4), old_size=(8, 8), num_prefix_tokens=1)
    assert model.pos_embed.shape == (1, 17, 192) and torch.allclose(model.pos_embed, expected)
    for k, v in model.state_dict().items():
        if k not in ("pos_embed", "head.weight", "head.bias"):
            assert torch.equal(v, saved[k]), k
    assert "position embeddings (1, 65, 192) -> (1, 17, 192)" in notes[-1]

    r = train(db_url, "--model", "vit_tiny", "--pretrained-file", path, "--checkpoint-dir", tmp_path / "ck")
    assert r.exit_code == 0, r.output
    assert "resampled by timm to this one: position embeddings (1, 65, 192) -> (1, 17, 192)" in r.output
    assert rows(db_url, "select status from runs") == [{"status": "completed"}]


def test_vit_hub_shaped_checkpoint_resamples_the_patch_embedding_too(tmp_path):
    """timm's own ViT-Tiny (16-px patches) made at 32 px, in a 16-px run (4-px patches, a 4x4 grid):
    the patch embedding is resampled by timm's pseudo-inverse rule, the grid of 2x2 to 4x4."""
    path = tmp_path / "vit.safetensors"
    save_file(timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=1000).state_dict(), str(path))
    saved = load_file(str(path))
    model = build_model("vit_tiny", num_classes=10, image_size=16, pretrained_file=path)
    assert torch.allclose(model.patch_embed.proj.weight, resample_patch_embed(saved["patch_embed.proj.weight"], [4, 4]))
    assert model.pos_embed.shape == (1, 17, 192)
    assert torch.equal(model.blocks[11].mlp.fc2.weight, saved["blocks.11.mlp.fc2.weight"])


def test_a_head_of_the_runs_own_classes_is_loaded_not_reinitialised(tmp_path):
    """A 10-class file into a 10-class run keeps its head, EfficientNet's included (whose new heads the
    harness re-initialises at the 1000-class scale: only new ones)."""
    for name, timm_name in (("efficientnet_b0", "efficientnet_b0"), ("resnet18", "resnet18")):
        src = timm.create_model(timm_name, num_classes=10)
        torch.save(src.state_dict(), tmp_path / f"{name}.pth")
        model = build_model(name, num_classes=10, image_size=32, pretrained_file=tmp_path / f"{name}.pth")
        assert torch.equal(model.get_classifier().weight, src.get_classifier().weight), name


def test_resume_does_not_read_the_pretrained_file_again(files, db_url, tmp_path):
    """The weights of a resumed run come from its checkpoint: the file it started from may be gone."""
    path = tmp_path / "weights.pth"
    path.write_bytes((files / "resnet18.pth").read_bytes())
    assert train(db_url, "--model", "resnet18", "--pretrained-file", path, "--checkpoint-dir", tmp_path / "ck").exit_code == 0
    path.unlink()
    r = CliRunner().invoke(main, ["train", "--resume", str(tmp_path / "ck" / "last.pt"), "--epochs", "2", "--db", db_url])
    assert r.exit_code == 0, r.output
    assert "epoch   2/2" in r.output and "replaced by a new" not in r.output


@pytest.mark.parametrize("case,model,fix", [
    ("wrong architecture", "vit_tiny", "Not weights for vit_tiny (timm vit_tiny_patch16_224): 150 of its 152 tensors are "
                                       "not in the file (e.g. blocks.0.attn.proj.bias"),
    ("missing", "resnet18", "No such file; give the path of a .pth/.safetensors state dict"),
    ("random bytes .pth", "resnet18", "Not a readable state dict ("),
    ("random bytes .safetensors", "resnet18", "Not a readable state dict (SafetensorError"),
    ("a whole pickled model", "resnet18", "Holds pickled Python objects (a whole model?)"),
])
def test_bad_file_exits_2_with_one_message_and_writes_nothing(case, model, fix, files, tmp_path):
    path = {"wrong architecture": files / "resnet18.pth", "missing": tmp_path / "nope.pth",
            "random bytes .pth": tmp_path / "junk.pth", "random bytes .safetensors": tmp_path / "junk.safetensors",
            "a whole pickled model": tmp_path / "model.pth"}[case]
    if case.startswith("random bytes"):
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                       dtype=torch.uint8).numpy().tobytes())
    if case == "a whole pickled model":
        torch.save(timm.create_model("resnet18", num_classes=10), path)
    db = tmp_path / "out" / "results.db"
    db.parent.mkdir()
    r = train(f"sqlite:///{db}", "--model", model, "--pretrained-file", path, "--checkpoint-dir", tmp_path / "out" / "ck")
    assert r.exit_code == 2, r.output
    (line,) = r.output.strip().splitlines()  # one message, no traceback, nothing printed before it
    assert line.startswith(f"error: --pretrained-file: got {str(path)!r}. ") and fix in line, line
    assert "torch.save(model.state_dict(), PATH)" in line or "give a state dict of timm.create_model(" in line
    if db.exists():  # no experiment, no run
        with sqlite3.connect(db) as c:
            have = {t for (t,) in c.execute("select name from sqlite_master where type='table'")}
            assert all(c.execute(f"select count(*) from {t}").fetchone()[0] == 0 for t in have & {"experiments", "runs"})
    assert not (tmp_path / "out" / "ck").exists()
