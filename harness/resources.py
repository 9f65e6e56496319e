"""The cards and cores a trial asks for: counting this machine's GPUs, sharing them among the trials
that run at once (`gpu: auto`), and refusing a trial no machine can hold.

One rule for sweep, benchmark and ablate, used where the cards are counted: `sweep --validate`
(`study.check_study`, this machine), the engine before Ray starts (this machine, counted once by
torch) and on a cluster (`engine.cluster.check_cluster_resources`, Ray's count of each node). Imports
no torch until it counts the cards, and no Ray.
"""

from __future__ import annotations

import math
import os

from harness.errors import UserError
from harness.specs import ResourcesSpec


def share_cards(resources: ResourcesSpec, *, gpus: float, concurrency: int) -> ResourcesSpec:
    """`resources` with `gpu: auto` resolved for a machine (or cluster) of `gpus` cards: 0 without one;
    else 1/k of a card per trial, k = ceil(concurrency / gpus) trials per card, so `concurrency` trials
    run at once spread over the cards. Not gpus/concurrency: Ray places a fractional GPU on the first card
    with room, so 4 trials of 0.25 on 4 cards would all land on card 0, and 6 trials of 4/6 on 4 cards
    would run 4 at a time (no card holds two). A number (0 included) is kept as asked."""
    if resources.gpu != "auto":
        return resources
    if gpus <= 0:
        return resources.model_copy(update={"gpu": 0.0})
    per_card = math.ceil(max(1, concurrency) / max(1, int(gpus)))
    # Floored, not rounded: 7 x round(1/7, 3) = 1.001 GPUs, and the 7th trial would wait.
    return resources.model_copy(update={"gpu": math.floor(1000 / per_card) / 1000})


def local_gpus() -> int:
    """The CUDA cards torch sees on this machine (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_local_resources(resources: ResourcesSpec, *, field: str, concurrency: int = 1,
                          gpus: int | None = None) -> ResourcesSpec:
    """`resources` with `gpu: auto` resolved for this machine (`share_cards`); refused when this machine
    cannot give them (Ray would leave the trial PENDING forever). `gpus`: the cards already counted
    (`local_gpus`), so a caller that needs the count too counts once; None: counted here, and torch is
    imported only when some may be asked for."""
    cpus = os.cpu_count() or 1
    if gpus is None:
        gpus = local_gpus() if resources.gpu == "auto" or resources.gpu > 0 else 0
    resources = share_cards(resources, gpus=gpus, concurrency=concurrency)
    check_fits(resources, cpus=cpus, gpus=gpus, where="this machine", field=field)
    return resources


def check_fits(resources: ResourcesSpec, *, cpus: float, gpus: float, where: str, field: str) -> None:
    """Refuse a trial that `where` (`cpus` cores, `gpus` cards) cannot hold: Ray would leave it PENDING
    forever."""
    if resources.cpu > cpus:
        raise UserError(f"{field}.cpu", resources.cpu, f"{where} has {cpus:g} CPU cores; ask for at most {cpus:g} per trial "
                        "(trials run side by side up to `concurrency`).")
    if resources.gpu > 0 and gpus == 0:
        raise UserError(f"{field}.gpu", resources.gpu, f"{where} has no GPU; set resources.gpu: auto (0 here, "
                        "the cards shared where there are some) or 0, or run on a GPU machine / pass --address of a cluster with GPUs.")
    if resources.gpu > gpus:
        raise UserError(f"{field}.gpu", resources.gpu, f"{where} has {gpus:g} GPUs; ask for at most {gpus:g} per trial "
                        "(fractions such as 0.25 pack several trials on one card).")
