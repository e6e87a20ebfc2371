"""Small measuring helpers shared by the benchmarks."""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from pathlib import Path


def rss_bytes() -> int:
    """Resident memory of this process now (Linux); peak resident memory elsewhere."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def median(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


class Timer:
    """`with Timer() as t: ...` then `t.ms`."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.ms = (time.perf_counter() - self.start) * 1e3


# Set by `bench all` for the benches it runs: their stderr is a pipe it relays to a terminal.
FORCE_PROGRESS = "STREAMVLM_PROGRESS"


def progress(total: int, label: str):
    """A progress bar on stderr when it reaches a terminal; silent otherwise (logs, CI)."""
    from tqdm import tqdm

    shown = sys.stderr.isatty() or os.environ.get(FORCE_PROGRESS) == "1"
    return tqdm(total=total, desc=label, unit="", leave=False, disable=not shown)


def random_frame(model_name: str, hidden: int, index: int, tokens: int, period_ns: int):
    """Frame `index` of a stream of random visual tokens (the decoder's cost does not depend
    on their values), the same for every mode that asks for it."""
    import torch

    from streamvlm.types import TokenBatch

    g = torch.Generator().manual_seed(index)
    embeddings = torch.randn(tokens, hidden, generator=g) * 0.02
    return TokenBatch((index + 1) * period_ns, index, embeddings, torch.arange(tokens), (14, 14), model=model_name)


def pick_device(device: str) -> str:
    """'auto' -> 'cuda' where torch sees a GPU, else 'cpu'; anything else as given."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
