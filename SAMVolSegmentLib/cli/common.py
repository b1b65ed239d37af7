"""What every ``samvolseg`` subcommand shares: the ``--device`` option and its check, and loading a model with a
one-line report. The main parser (:mod:`.main`) and the subcommands registered from elsewhere (``serve`` in
:mod:`SAMVolSegmentLib.remote.cli`, ``teach`` in :mod:`.teach`) import it, so none of them imports another.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Union

from ..engine.threads import ENV_THREADS, ThreadPolicy
from ..errors import ModelNotAvailableError

DEVICE_HELP = "torch device: cpu (default), cuda, cuda:1, mps; also accepted before the subcommand"


def load_model_verbose(model: str, device: str):
    """``load_model`` with a one-line report of what was loaded and how long it took."""
    from ..model import load_model

    start = time.perf_counter()
    loaded = load_model(model, device=device)
    print(f"model {model} ({getattr(loaded, 'model_id', '?')}) loaded on {device} in {time.perf_counter() - start:.1f} s")
    return loaded


def check_device(device: str) -> None:
    """Refuse a torch device this machine cannot use, in one line, before any model is built.

    Raises:
        ModelNotAvailableError: not a device name, or a device that this torch build or machine lacks.
    """
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ModelNotAvailableError(f"--device {device!r} is not a torch device ({exc}); use cpu, cuda, cuda:N or mps.") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            built = "was built without CUDA" if torch.version.cuda is None else "finds no CUDA GPU"
            raise ModelNotAvailableError(f"--device {device} is not available: this torch ({torch.__version__}) {built}; "
                                         "use --device cpu, or install a CUDA build of torch on a GPU machine.")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ModelNotAvailableError(f"--device {device} is not available: this machine has "
                                         f"{torch.cuda.device_count()} CUDA device(s), cuda:0..; pick one of them.")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ModelNotAvailableError(f"--device {device} is not available (MPS needs Apple silicon and a torch built "
                                     "with MPS); use --device cpu.")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ModelNotAvailableError(f"--device {device} is not supported; use cpu, cuda, cuda:N or mps.")


def add_device(parser: argparse.ArgumentParser) -> None:
    """Add ``--device`` to a subcommand's parser."""
    # SUPPRESS: a subcommand sets args.device only when the flag is given after it, so
    # "samvolseg --device cuda segment ..." and "samvolseg segment ... --device cuda" both work.
    parser.add_argument("--device", default=argparse.SUPPRESS, help=DEVICE_HELP)


THREADS_HELP = ("CPU threads of the model: N (encoder N, per-click decoder min(N, 2)) or ENCODER,DECODER; default: "
                f"${ENV_THREADS}, else every CPU (up to 8) for the encoder and up to 2 for the decoder (clicks stay fast when "
                "other programs are busy)")


def thread_policy(text: str) -> ThreadPolicy:
    """argparse type of ``--threads``: N or ENCODER,DECODER."""
    try:
        return ThreadPolicy.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_threads(parser: argparse.ArgumentParser) -> None:
    """Add ``--threads`` (N or ENCODER,DECODER) to a subcommand that runs a model."""
    parser.add_argument("--threads", type=thread_policy, default=None, help=THREADS_HELP)


def apply_threads(threads: Union[None, int, ThreadPolicy]) -> None:
    """Make ``threads`` this process's thread policy: every ``Predictor`` made from here on (and local batch
    workers, which inherit the environment) reads ``$SAMVOLSEG_THREADS``. None leaves it as it is."""
    if threads is not None:
        os.environ[ENV_THREADS] = str(ThreadPolicy.resolve(threads))
