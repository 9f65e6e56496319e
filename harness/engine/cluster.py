"""Ray itself: starting or attaching to it, and what a cluster is asked before any trial runs.

`ray_session` starts a Ray of this run's own (or attaches to `--address`, probed over TCP first so a
wrong address is an error in seconds, not a hang); `check_cluster_resources` refuses a trial no node can hold
(Ray would leave it PENDING forever); `check_shared_storage` refuses a `--storage-path` some node
cannot see.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray

from harness.errors import UserError
from harness.resources import check_fits, share_cards
from harness.specs import ResourcesSpec

CONNECT_TIMEOUT_S = 5  # a cluster address that does not answer in this long is reported, not waited for
STORAGE_PROBE_S = 30  # how long every node gets to say whether it sees --storage-path
# Ray saves its experiment state (trials, searcher) at most this often (s). Tune's default ("auto",
# >= 10 s) would let a killed driver lose up to 10 s of trial bookkeeping; the state is small.
EXPERIMENT_STATE_PERIOD_S = "1"


def check_cluster_resources(resources: ResourcesSpec, *, field: str, concurrency: int = 1) -> ResourcesSpec:
    """Per-trial resources on the Ray cluster this process is attached to, with `gpu: auto` resolved
    (`resources.share_cards` over all its cards), refused when its largest node cannot hold one trial
    (Ray would leave it PENDING forever). This machine alone is checked before Ray starts, by
    `resources.check_local_resources`."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    resources = share_cards(resources, gpus=sum(n.get("GPU", 0) for n in nodes), concurrency=concurrency)
    check_fits(resources, cpus=max((n.get("CPU", 0) for n in nodes), default=0),
               gpus=max((n.get("GPU", 0) for n in nodes), default=0), where="the largest node of the Ray cluster", field=field)
    return resources


def check_ray_sees_the_gpus(resources: ResourcesSpec, *, torch_gpus: int, ray_gpus: float, field: str) -> str | None:
    """After harness started Ray on this machine: Ray counts GPUs its own way (CUDA_VISIBLE_DEVICES, or
    nvidia-smi/NVML), torch through the CUDA runtime. Trials that ask for a card Ray did not count
    would wait PENDING for ever: refused with both counts. A difference that still covers the trials is
    one line (None when they agree)."""
    asked = float(resources.gpu)
    if asked > 0 and ray_gpus < asked:
        raise UserError(f"{field}.gpu", resources.gpu, f"torch sees {torch_gpus} GPU{'s' if torch_gpus != 1 else ''} here "
                        f"but the Ray started for this run counts {ray_gpus:g}, and each trial asks for {asked:g}: Ray would "
                        "never start one. Make both see the same cards (check CUDA_VISIBLE_DEVICES and `nvidia-smi`), "
                        "or set resources.gpu: 0 to train on the CPU.")
    if torch_gpus != ray_gpus:
        return (f"note: torch sees {torch_gpus} GPU{'s' if torch_gpus != 1 else ''}, Ray counts {ray_gpus:g}: "
                "trials are placed on Ray's")
    return None


def gpu_idle_warning(resources: ResourcesSpec, gpus: float, *, field: str, where: str = "this machine") -> str | None:
    """One line when trials ask for no GPU where there are some (None otherwise).

    Ray >= 2.60 no longer hides the cards from a task granted 0 GPUs, but the trainable follows the
    grant (`device_for_grant`), so such trials train on the CPU while the GPUs idle: say so, and how to
    share the cards instead (`gpu: auto`, the default)."""
    if resources.gpu > 0 or gpus <= 0:
        return None
    key = field.rsplit(": ", 1)[-1]  # a study's field is "<file>: resources"
    return (f"warning: {field}.gpu is 0 on {where} with {gpus:g} GPU{'s' if gpus != 1 else ''}: trials train on the CPU; "
            f"set {key}: {{gpu: auto}} (the default) to share the cards among the trials that run at once, or a "
            "number per trial.")


def check_shared_storage(storage: Path, *, field: str = "--storage-path") -> None:
    """On a cluster of several nodes, refuse a storage path some node cannot see.

    Ray keeps trial checkpoints and experiment state under `storage`; a node that writes them to its
    own disk leaves the driver (and a retried trial on another node) without them. The driver writes
    a marker file there and a zero-CPU task on each node looks for it (zero CPU: it runs even where
    every CPU is taken)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    made = not storage.exists()
    storage.mkdir(parents=True, exist_ok=True)
    marker = storage / f".harness-probe-{uuid.uuid4().hex}"
    marker.write_text("harness: can every node see this folder?\n")

    def sees(path: str) -> tuple[bool, str]:  # nested: pickled by value, so a node's worker imports no harness
        import os
        import socket

        return os.path.exists(path), socket.gethostname()

    probe = ray.remote(num_cpus=0)(sees)
    try:
        refs = {n["NodeID"]: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(marker)) for n in nodes}
        try:
            seen = dict(zip(refs, ray.get(list(refs.values()), timeout=STORAGE_PROBE_S)))
        except ray.exceptions.GetTimeoutError:
            raise UserError(field, str(storage), f"Not every node of the Ray cluster answered within {STORAGE_PROBE_S} s "
                            "when asked whether it sees this folder; check `ray status` and try again.") from None
    finally:
        marker.unlink(missing_ok=True)
    blind = [f"{host} (node {node_id[:8]})" for node_id, (found, host) in seen.items() if not found]
    if blind:
        if made:
            shutil.rmtree(storage, ignore_errors=True)
        raise UserError(field, str(storage), f"{', '.join(blind)} cannot see this folder (Ray keeps trial checkpoints and "
                        "its state there, and a trial retried on another node needs them): put it on a filesystem every "
                        "node mounts at the same path (NFS, a shared disk), e.g. --storage-path /shared/ray_results.")


def describe_cluster() -> str:
    r = ray.cluster_resources()
    return f"ray: {r.get('CPU', 0):g} CPUs, {r.get('GPU', 0):g} GPUs"


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Start (or attach to) Ray unless this process already did; shut down only what we started."""
    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if address is not None:
        _probe(address)
        # Ray retries a refused GCS connection for ~20 s (one try a second); the head answered the
        # probe, so a few tries tell a wrong token or version from a slow start.
        os.environ.setdefault("RAY_gcs_server_port_wait_time_s", str(CONNECT_TIMEOUT_S))
    try:
        # "local": a new Ray for this run even when `ray start` left one running on this machine
        # (address=None would attach to it, and to its CPUs and its other jobs).
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 configure_logging=True)
    except (ConnectionError, ValueError, RuntimeError) as e:
        if address is None:
            raise
        raise UserError("--address", address, _attach_fix(address, e)) from None
    try:
        yield
    finally:
        ray.shutdown()


def _probe(address: str) -> None:
    """A TCP connect to the head first: ray.init waits indefinitely for an address nobody answers."""
    if address in ("auto", "local"):
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise UserError("--address", address, "Give the head node's HOST:PORT as `ray start --head` printed it "
                        "(e.g. 10.0.0.5:6379), or leave --address out to run on this machine.")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise UserError("--address", address, f"Nothing answered at {host}:{port} within {CONNECT_TIMEOUT_S} s "
                        f"({e.strerror or type(e).__name__}); start the head there with `ray start --head --port {port}`, "
                        "check the host name, port and firewall, or leave --address out to run on this machine.") from None


def _attach_fix(address: str, e: BaseException) -> str:
    """Why attaching to a cluster that answered failed, with the fix."""
    chain, cause = [], e
    while cause is not None:
        chain.append(f"{type(cause).__name__}: {cause}")
        cause = cause.__cause__ or cause.__context__
    text = " ".join(chain)
    if "InvalidAuthToken" in text or "AuthenticationError" in text:
        return ("The cluster there requires Ray's token authentication and this machine did not present its token: "
                "export RAY_AUTH_MODE=token here (as on every node), with the head's token in ~/.ray/auth_token "
                "(`ray get-auth-token` on the head prints it) or in RAY_AUTH_TOKEN.")
    return (f"Cannot attach to a Ray cluster there ({str(e).splitlines()[0][:160]}); check that it is a Ray head "
            "node's GCS port and that this machine runs the same Ray version, or leave --address out.")


def quiet_tune() -> None:
    """Tune's own progress tables and per-failure prints off: the recorder says what happened, once."""
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = EXPERIMENT_STATE_PERIOD_S
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # the recorder prints one line per failure
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "0")
    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.ERROR)

