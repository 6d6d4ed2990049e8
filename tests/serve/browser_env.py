"""Whether the browser test can run here, and what to do when it cannot: skip, or fail under CI.

``make test`` runs ``.ci/ensure-browser`` first, which installs Debian's Chromium when it can;
this module decides what the test does when the browser is still missing. The paths are the
script's (``MACO_CHROMIUM``, ``MACO_CHROMEDRIVER``, default Debian's).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

INSTALL_HINT = (
    "install Debian's chromium and chromium-driver (sudo apt-get install chromium "
    "chromium-driver; `make test` does it when run as root or with passwordless sudo), or set "
    "MACO_SKIP_BROWSER=1"
)


@dataclass(frozen=True)
class BrowserCheck:
    """``action``: ``"run"``, ``"skip"`` or ``"fail"``; ``reason`` says why (shown by ``-ra``)."""

    action: Literal["run", "skip", "fail"]
    reason: str = ""


def browser_paths(env: Mapping[str, str] = os.environ) -> tuple[Path, Path]:
    """Chromium and chromedriver, as ``.ci/ensure-browser`` looks for them."""
    return (
        Path(env.get("MACO_CHROMIUM", "/usr/bin/chromium")),
        Path(env.get("MACO_CHROMEDRIVER", "/usr/bin/chromedriver")),
    )


def under_ci(env: Mapping[str, str]) -> bool:
    """``CI=true`` (or 1/yes), as CI services set it."""
    return env.get("CI", "").strip().lower() in ("true", "1", "yes")


def check_browser(env: Mapping[str, str] = os.environ) -> BrowserCheck:
    """Run when both executables are there; else skip loudly, but fail under CI, which must run
    the test. ``MACO_SKIP_BROWSER=1`` always skips (an explicit choice)."""
    if env.get("MACO_SKIP_BROWSER") == "1":
        return BrowserCheck("skip", "MACO_SKIP_BROWSER=1")
    missing = [str(path) for path in browser_paths(env) if not os.access(path, os.X_OK)]
    if not missing:
        return BrowserCheck("run")
    if under_ci(env):
        return BrowserCheck(
            "fail", f"{' and '.join(missing)} missing, and CI={env['CI']} must run the browser test: {INSTALL_HINT}"
        )
    return BrowserCheck("skip", f"BROWSER TEST NOT RUN: {' and '.join(missing)} missing; {INSTALL_HINT}")
