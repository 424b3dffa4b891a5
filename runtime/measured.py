"""The sample quality measured per sampler (docs/quality.md's latest tables, 10,000 paired samples per row):
the one copy in code, listed by `ms-ddpm samplers`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

from .schedulers import DEFAULT_SCHEDULER, DEFAULT_SPACING, DEFAULT_STEPS, SCHEDULERS, SPACINGS

MEASURED_ON = "make demo's model trained 2,000 steps, docs/quality.md"
BASELINE = "ddpm:200"


@dataclass(frozen=True)
class Measured:
    """One `ms-ddpm quality` row: FD - DDPM-200's FD, as % of DDPM-200's FD, with its paired 95% interval."""

    row: str  # quality's --rows syntax: scheduler:steps[:eta=E][:spacing=S]
    n: int
    percent: float
    low: float
    high: float

    @property
    def scheduler(self) -> str:
        return self.row.split(":")[0]

    @property
    def calls(self) -> int:
        return int(self.row.split(":")[1])

    @property
    def spacing(self) -> str:
        return self._option("spacing") or DEFAULT_SPACING

    def _option(self, key: str) -> str:
        return next((part.partition("=")[2] for part in self.row.split(":")[2:] if part.startswith(f"{key}=")), "")

    def describe(self) -> str:
        eta = self._option("eta")
        if self.row == BASELINE:
            return f"{self.calls} calls: the baseline"
        return (f"{self.calls} calls{f' (eta {eta})' if eta else ''} {self.percent:+.1f}% "
                f"[{self.low:+.1f}%, {self.high:+.1f}%]")


MEASURED: Tuple[Measured, ...] = (
    Measured(BASELINE, 10000, 0.0, 0.0, 0.0),
    Measured("ddpm:50", 10000, 14.2, 11.8, 17.5),
    Measured("ddim:50:eta=0", 10000, 201.1, 169.6, 234.7),
    Measured("ddim:50:eta=1", 10000, 14.2, 11.8, 17.5),
    Measured("dpmpp:20", 10000, 173.1, 141.7, 206.4),
    Measured("dpmpp-sde:50", 10000, -7.1, -9.1, -5.5),
    Measured("dpmpp-sde:20", 10000, -14.3, -18.3, -9.4),
    Measured("dpmpp-sde:10", 10000, -11.6, -17.2, -6.0),
    Measured("dpmpp-sde:5", 10000, 75.6, 64.9, 89.2),
    Measured("dpmpp-sde:5:spacing=logsnr", 10000, 537.3, 491.0, 587.6),
    Measured("dpmpp-sde:5:spacing=karras", 10000, 75.5, 53.1, 101.2),
    Measured("dpmpp-sde:4:spacing=linspace", 10000, 54.6, 34.9, 76.3),
    Measured("dpmpp-sde:4:spacing=logsnr", 10000, 1359.8, 1294.3, 1420.1),
    Measured("dpmpp-sde:4:spacing=karras", 10000, 484.3, 438.3, 532.6),
    Measured("dpmpp-sde:3:spacing=linspace", 10000, 116.2, 94.8, 142.0),
    Measured("dpmpp-sde:3:spacing=logsnr", 10000, 4392.6, 4298.7, 4470.8),
    Measured("dpmpp-sde:3:spacing=karras", 10000, 2295.9, 2215.4, 2368.7),
    Measured("dpmpp-sde:2:spacing=logsnr", 10000, 7501.8, 7405.8, 7582.4),
    Measured("dpmpp3m:50", 10000, 196.8, 165.3, 230.5),
    Measured("dpmpp3m:20", 10000, 190.3, 158.7, 223.7),
    Measured("dpmpp3m:10", 10000, 177.3, 146.4, 210.4),
    Measured("dpmpp3m:5", 10000, 166.6, 139.2, 198.1),
)


def sampler_lines() -> List[str]:
    """One line per scheduler and spacing: its default U-Net calls per image, then each measured row's quality."""
    lines = [f"FD against the tutorial's DDPM-200, paired 95% interval ({MEASURED_ON}); "
             "the default is marked *"]
    for name in SCHEDULERS:
        calls = DEFAULT_STEPS[name] or "T"
        for spacing in SPACINGS:
            rows = sorted((m for m in MEASURED if (m.scheduler, m.spacing) == (name, spacing)), key=lambda m: m.calls)
            mark = "*" if (name, spacing) == (DEFAULT_SCHEDULER, DEFAULT_SPACING) else " "
            quality = "; ".join(m.describe() for m in rows) or "not measured"
            lines.append(f"{mark} {name:<10} {spacing:<9} {calls:>3} calls by default | {quality}")
    return lines
