"""Checkpoints of the evaluation model's training, so that it can run over many sessions.

A 2-core CPU needs more than an hour for one training, and a session may end at any
time: the trainer saves its whole state at every epoch of stage 1 and every
`every_steps` steps of stage 2 (weights in float32, optimizer and schedule, every random
generator, the step reached, the time spent), and `--resume` carries on from the last
one. A resumed run gives the same bytes as one that was never interrupted, on the same
thread count and library versions (tests/test_eval_model.py checks it).

With `max_seconds`, the trainer stops at the first checkpoint after that much time and
says how to go on.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

STATE = "state.pt"
VISION = "vision.pt"  # stage 1's result, reused by a later training with the same stage 1


class Interrupted(RuntimeError):
    """Training stopped at a checkpoint because its time was up; resume to go on."""


class Checkpoints:
    def __init__(self, folder: Path | None, settings, max_seconds: float | None = None, every_steps: int = 50):
        self.folder = folder
        self.settings = asdict(settings)
        self.max_seconds = max_seconds
        self.every_steps = every_steps
        self.started = time.perf_counter()
        self.seconds_before = 0.0  # spent in earlier sessions of this training

    @property
    def seconds(self) -> float:
        """Training time so far, every session included."""
        return self.seconds_before + time.perf_counter() - self.started

    def load(self) -> dict[str, Any] | None:
        """The last saved state, or None when there is none; refused when it was made with
        other settings, thread count or torch (the bytes would differ from a straight run)."""
        path = self._path()
        if path is None or not path.exists():
            return None
        state = torch.load(path, weights_only=False)
        made = (state["settings"], state["torch"], state["threads"])
        now = (self.settings, torch.__version__, torch.get_num_threads())
        if made != now:
            raise ValueError(f"the checkpoint in {self.folder} was made with other settings or versions: "
                             f"{made} vs {now}; start afresh without --resume or with these settings")
        self.seconds_before = state["seconds"]
        return state

    def save(self, stage: str, step: int, parts: dict[str, Any]) -> None:
        """Write the state atomically (a killed session leaves the previous checkpoint whole),
        then stop when the time is up."""
        path = self._path()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            state = {"settings": self.settings, "torch": torch.__version__, "threads": torch.get_num_threads(),
                     "stage": stage, "step": step, "seconds": self.seconds, "rng": torch.get_rng_state(), **parts}
            scratch = path.with_suffix(".tmp")
            torch.save(state, scratch)
            os.replace(scratch, path)
        if self.max_seconds is not None and self.seconds_this_session >= self.max_seconds:
            where = f"a checkpoint in {self.folder}" if path is not None else "no checkpoint folder"
            raise Interrupted(f"stopped after {self.seconds_this_session:.0f} s at {stage} step {step} "
                              f"({where}); run the same command with --resume to go on")

    def save_vision(self, key: dict, parts: dict[str, Any]) -> None:
        """Keep stage 1's result beside the state: it takes most of an hour on a 2-core CPU,
        and a change to stage 2 alone (its recipe, its steps) need not pay for it again."""
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            scratch = self.folder / (VISION + ".tmp")
            torch.save({"key": key, **parts}, scratch)
            os.replace(scratch, self.folder / VISION)

    def load_vision(self, key: dict) -> dict[str, Any] | None:
        """Stage 1's saved result when it was made with this key (stage-1 settings, thread
        count, torch, and the hash of stage 1's frames and labels), else None."""
        path = None if self.folder is None else self.folder / VISION
        if path is None or not path.exists():
            return None
        saved = torch.load(path, weights_only=False)
        return saved if saved["key"] == key else None

    @property
    def seconds_this_session(self) -> float:
        return time.perf_counter() - self.started

    def _path(self) -> Path | None:
        return None if self.folder is None else self.folder / STATE


def module_states(*modules: torch.nn.Module) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


def restore_modules(states: list[dict[str, torch.Tensor]], *modules: torch.nn.Module) -> None:
    for state, module in zip(states, modules, strict=True):
        module.load_state_dict(state)
