"""How many CPU threads the model uses, separately for the encoder and the per-click decoder.

Why it matters (``benchmarks/under_load.py``): torch's CPU build runs its operators on an OpenMP team as wide
as the machine. A click is hundreds of small operators, each a parallel region that ends in a barrier; when
another process (Slicer's GUI, a browser, an evaluation run) holds one of the cores, every barrier waits for a
descheduled team member that spins while it waits, and a 50 ms click becomes 0.2–2 s. libgomp's idle team
members spin up to ~300,000 iterations (about 3 ms) after every parallel region, burning the core that the other
process needs; :func:`configure_openmp` makes them sleep instead (``OMP_WAIT_POLICY=PASSIVE``, which has to
happen before torch is first imported). Measured on a 2-core VM with one competing busy process, that alone takes
the click p50 from 4.2x to 1.3x its quiet value; one decoder thread instead of two takes it to 1.05x but costs
~20 % on a quiet machine and doubles the click time at click 100 of one mask, so the decoder keeps two threads
where there are two cores (Slicer's default, ``SAMVolSegment/SAMVolSegmentSlicerLib/local_session.py``, leaves
a core to its GUI thread instead). The encoder (a few large convolutions, once per region) uses every CPU up
to eight. Sleeping costs 8–15 % of a click on a quiet machine (threads take a moment to wake); a short spin
before sleeping instead (``GOMP_SPINCOUNT``, ``benchmarks/results/under_load_spincount.md``) only trades that
for the busy-machine time: 3,000 spins matched the old spinning when quiet (44.0 against PASSIVE's 49.3 ms) and
took 73.0 ms against 57.4 beside one busy process; 1,000 gained 4 % and lost 6 %; 10,000–100,000 were 1.6–4.3x
slower than PASSIVE on a shared machine. So PASSIVE stays the default; a user's ``GOMP_SPINCOUNT`` or
``OMP_WAIT_POLICY`` is left alone.

Resolution order: an explicit ``threads`` argument (``Predictor``, ``InteractiveSession``, ``--threads``), then
the environment variable ``SAMVOLSEG_THREADS``, then :meth:`ThreadPolicy.default`. Each is ``"N"`` (encoder N
threads, decoder ``min(N, 2)``) or ``"E,D"`` (both given).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Iterator, Optional, Union

ENV_THREADS = "SAMVOLSEG_THREADS"
#: Most threads of the per-click decoder by default: its operators are small, and more threads mostly add
#: barriers (see the module docstring for the measurements behind 2).
DEFAULT_DECODER_THREADS = 2
#: Upper bound of the default encoder threads: more gains little on one 128³ ROI and takes cores from the rest
#: of the machine.
MAX_DEFAULT_ENCODER_THREADS = 8


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one, else the CPU count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ThreadPolicy:
    """Intra-op threads for the encoder (once per ROI) and for the decoder (every click), each ≥ 1."""

    encoder: int
    decoder: int

    def __post_init__(self) -> None:
        for name in ("encoder", "decoder"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} threads must be a whole number ≥ 1, got {value!r}")

    @classmethod
    def default(cls) -> ThreadPolicy:
        """Encoder: every available CPU (at most :data:`MAX_DEFAULT_ENCODER_THREADS`); decoder: at most
        :data:`DEFAULT_DECODER_THREADS`."""
        encoder = min(available_cpus(), MAX_DEFAULT_ENCODER_THREADS)
        return cls(encoder=encoder, decoder=min(encoder, DEFAULT_DECODER_THREADS))

    @classmethod
    def parse(cls, text: str) -> ThreadPolicy:
        """``"N"`` or ``"E,D"`` (as ``--threads`` and ``SAMVOLSEG_THREADS`` take them).

        Raises:
            ValueError: not one or two whole numbers ≥ 1 (the message shows the accepted forms).
        """
        parts = [p.strip() for p in str(text).split(",")]
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            numbers = []
        if len(numbers) not in (1, 2) or min(numbers or [0]) < 1:
            raise ValueError(f"threads {text!r} must be N or ENCODER,DECODER (whole numbers ≥ 1), e.g. 2 or 4,1")
        if len(numbers) == 1:
            return cls(encoder=numbers[0], decoder=min(numbers[0], DEFAULT_DECODER_THREADS))
        return cls(encoder=numbers[0], decoder=numbers[1])

    @classmethod
    def resolve(cls, threads: Union[None, int, str, ThreadPolicy] = None) -> ThreadPolicy:
        """The policy for ``threads`` (a policy, N, "N" or "E,D"), else ``$SAMVOLSEG_THREADS``, else the default.

        Raises:
            ValueError: a malformed value (names the environment variable when it came from there).
        """
        if isinstance(threads, ThreadPolicy):
            return threads
        if threads is not None:
            return cls.parse(str(threads))
        from_env = os.environ.get(ENV_THREADS, "").strip()
        if from_env:
            try:
                return cls.parse(from_env)
            except ValueError as exc:
                raise ValueError(f"{ENV_THREADS}: {exc}") from None
        return cls.default()

    def __str__(self) -> str:
        return f"{self.encoder},{self.decoder}"


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads on this thread, then restore the previous count.

    With torch's OpenMP backend the count is this thread's own setting, so the worker thread that runs the
    model can switch between encoder and decoder counts without touching other threads."""
    import torch

    previous = torch.get_num_threads()
    if previous != count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if previous != count:
            torch.set_num_threads(previous)


def configure_openmp(wait_policy: str = "PASSIVE") -> Optional[str]:
    """Let idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY``), unless the user chose already.

    Only effective before torch's OpenMP runtime starts, i.e. before the first ``import torch`` in the process;
    returns the policy set, or None when nothing was changed (torch already imported, or ``OMP_WAIT_POLICY`` /
    ``GOMP_SPINCOUNT`` given by the user, which always win)."""
    if "torch" in sys.modules or os.environ.get("OMP_WAIT_POLICY") or os.environ.get("GOMP_SPINCOUNT"):
        return None
    os.environ["OMP_WAIT_POLICY"] = wait_policy
    return wait_policy
