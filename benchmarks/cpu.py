"""The CPU a benchmark ran on, as `lscpu` names it: speeds and even float results differ between CPUs."""

from __future__ import annotations

import subprocess


def cpu_name() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")
