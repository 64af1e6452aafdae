"""Tune's experiment state file cut short by a killed driver, repaired before ``pointtune resume`` restores it.

Tune writes ``experiment_state-<session>.json`` into its staging directory under Ray's session directory
(``<ray tmp>/session_*/artifacts/<time>/<name>/driver_artifacts``), then copies it to the sweep's storage; neither
write is atomic, so a driver killed during one leaves an empty or truncated file, and ``Tuner.restore`` fails
("Failed to restore the run state": a JSONDecodeError). The other copy usually survives: the staging one when
the copy to the storage was cut, the storage's previous session when the staging one was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from pointtune.config import ConfigError

__all__ = ["repair_experiment_state"]

STATE_GLOB = "experiment_state-*.json"  # Tune's TuneController.CKPT_FILE_TMPL


def _complete(path: Path) -> bool:
    """Whether ``path`` holds a whole JSON document."""
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def _staged_copies(tune_dir: Path, name: str) -> list[Path]:
    """Tune's staging copies of state file ``name`` in Ray's session directories, newest first."""
    ray_tmp = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray"
    found = ray_tmp.glob(f"session_*/artifacts/*/{tune_dir.name}/driver_artifacts/{name}")
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def repair_experiment_state(tune_dir: str | Path) -> str | None:
    """Make the newest experiment state file of a sweep's local Tune directory whole again, if a kill cut it
    short: replace it by Tune's complete staging copy, or, without one, set it aside (``<file>.cut-short``) so
    that Tune restores the previous session's state. Returns what was done in one line, or ``None`` when the
    newest state is whole (or the storage is remote: Tune's own).

    Raises:
        ConfigError: the only state file is cut short and no complete copy exists (names the file).
    """
    tune_dir = Path(tune_dir)
    if not tune_dir.is_dir():
        return None
    states = sorted(tune_dir.glob(STATE_GLOB))
    if not states or _complete(states[-1]):
        return None
    newest = states[-1]
    for copy in _staged_copies(tune_dir, newest.name):
        if _complete(copy):
            staged = newest.with_name(newest.name + ".tmp")
            shutil.copyfile(copy, staged)
            os.replace(staged, newest)
            return f"{newest} was cut short (the driver was killed while saving it): restored from Tune's copy {copy}"
    if len(states) > 1:
        newest.rename(newest.with_name(newest.name + ".cut-short"))
        return (f"{newest} was cut short (the driver was killed while saving it) and no complete copy exists: "
                f"resuming from the previous state, {states[-2].name}")
    raise ConfigError(f"{newest}: Tune's experiment state was cut short (the driver was killed while saving it) and "
                      "no complete copy exists; the sweep cannot be resumed, start it again")
