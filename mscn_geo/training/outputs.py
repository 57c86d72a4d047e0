"""The files of a run: best and last checkpoints, epoch log, config, learning curves.

``<out>`` is the best checkpoint on validation (fp16 weights, what classify
uses). ``<out>_last.pt`` is what ``resume`` needs: fp32 weights once, the
optimizer/scheduler/scaler/EMA state and the history; it is written at most
every ``last_every_min`` minutes and after the last epoch, not every epoch.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from mscn_geo.errors import OutputError
from mscn_geo.io.atomic import atomic_file

__all__ = ["RunFiles", "plot_curve"]


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """Paths of a run's files, from the best checkpoint's path ``out``."""

    out: Path

    @property
    def stem(self) -> Path:
        return self.out.with_suffix("")

    @property
    def last(self) -> Path:
        return Path(f"{self.stem}_last.pt")

    @property
    def log(self) -> Path:
        return Path(f"{self.stem}_log.jsonl")

    @property
    def config(self) -> Path:
        return Path(f"{self.stem}_config.yaml")

    @property
    def curve(self) -> Path:
        return Path(f"{self.stem}_curve.png")

    def all(self) -> list[Path]:
        return [self.out, self.last, self.log, self.config, self.curve]

    def claim(self, overwrite: bool, resuming: bool) -> None:
        """Create the folder; refuse to replace an earlier run's files unless told to.

        Raises:
            OutputError: a file exists (and neither ``overwrite`` nor ``resuming``),
                or the folder cannot be created.
        """
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(
                f"cannot create output folder {self.out.parent}: {exc.strerror}"
            ) from exc
        if self.out.is_dir():
            raise OutputError(f"{self.out} is a folder; give a checkpoint file name")
        if overwrite or resuming:
            return
        for path in self.all():
            if path.exists():
                raise OutputError(
                    f"{path} exists (from an earlier run); set overwrite to replace it"
                )

    def start_log(self, history: list[dict[str, Any]]) -> None:
        """The epoch log as ``history`` says (a resumed run drops epochs after its state)."""
        with atomic_file(self.log) as tmp:
            tmp.write_text("".join(json.dumps(entry) + "\n" for entry in history))

    def append_log(self, entry: dict[str, Any]) -> None:
        with self.log.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")

    def write_config(self, config: dict[str, Any]) -> None:
        with atomic_file(self.config) as tmp:
            tmp.write_text(yaml.safe_dump(config, sort_keys=True))

    def write_curve(self, history: list[dict[str, Any]]) -> None:
        if history:
            with atomic_file(self.curve) as tmp:
                plot_curve(history, tmp)


def plot_curve(history: list[dict[str, Any]], path: Path) -> None:
    """Loss and validation accuracy per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [h["train_loss"] for h in history], label="train loss")
    a.plot(ep, [h["val_loss"] for h in history], label="val loss")
    a.set_xlabel("epoch")
    a.legend()
    b.plot(ep, [h["val_oa"] for h in history], label="val OA")
    if history[0].get("val_oa_ema") is not None:
        b.plot(ep, [h["val_oa_ema"] for h in history], label="val OA (EMA)")
    b.set_xlabel("epoch")
    b.set_ylim(0, 1)
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
