"""Tune's state files cut short by a killed driver, repaired before ``pointtune resume`` restores them.

Tune writes ``experiment_state-<session>.json`` (JSON) and its search algorithm's ``search_gen_state-*.json``
or ``basic-variant-state-*.json`` (pickles, despite the name) into its staging directory under Ray's session
directory (``<ray tmp>/session_*/artifacts/<time>/<name>/driver_artifacts``), then copies them to the sweep's
storage. The copy is not atomic, and neither is the experiment state's first write, so a driver killed during
one leaves an empty or truncated file, and ``Tuner.restore`` fails ("Failed to restore the run state": a
JSONDecodeError, or an EOFError in ``has_checkpoint``). The other copy usually survives: the staging one when
the copy to the storage was cut, the storage's previous session when the staging one was. (The searcher's own
``searcher-state-*.pkl`` is rebuilt from the Optuna study: ``records.StudySearch.restore``.)
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from pointtune.config import ConfigError

__all__ = ["repair_tune_state"]


def _whole_json(path: Path) -> bool:
    """Whether ``path`` holds a whole JSON document."""
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def _whole_pickle(path: Path) -> bool:
    """Whether ``path`` holds a whole pickle (a truncated one raises EOFError or UnpicklingError)."""
    try:
        with path.open("rb") as f:
            pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError):
        return False
    return True


#: Tune's state files (``CKPT_FILE_TMPL`` of TuneController, SearchGenerator, BasicVariantGenerator): glob,
#: what it is, whether a file is whole.
STATE_FILES: tuple[tuple[str, str, Callable[[Path], bool]], ...] = (
    ("experiment_state-*.json", "Tune's experiment state", _whole_json),
    ("search_gen_state-*.json", "Tune's search state", _whole_pickle),
    ("basic-variant-state-*.json", "Tune's search state", _whole_pickle),
)


def _staged_copies(tune_dir: Path, name: str) -> list[Path]:
    """Tune's staging copies of state file ``name`` in Ray's session directories, newest first."""
    ray_tmp = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray"
    found = ray_tmp.glob(f"session_*/artifacts/*/{tune_dir.name}/driver_artifacts/{name}")
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def repair_tune_state(tune_dir: str | Path) -> list[str]:
    """Make the newest of each of Tune's state files (:data:`STATE_FILES`) in a sweep's local Tune directory
    whole again, if a kill cut it short: replace it by Tune's complete staging copy, or, without one, set it
    aside (``<file>.cut-short``) so that Tune restores the previous session's. Returns what was done, one line
    per file (none when every newest file is whole, or the storage is remote: Tune's own).

    Raises:
        ConfigError: the only file of a kind is cut short and no complete copy exists (names the file).
    """
    tune_dir = Path(tune_dir)
    if not tune_dir.is_dir():
        return []
    done = []
    for pattern, what, whole in STATE_FILES:
        states = sorted(tune_dir.glob(pattern))
        if states and not whole(states[-1]):
            done.append(_repair(states, what, whole))
    return done


def _repair(states: list[Path], what: str, whole: Callable[[Path], bool]) -> str:
    newest = states[-1]
    for copy in _staged_copies(newest.parent, newest.name):
        if whole(copy):
            staged = newest.with_name(newest.name + ".tmp")
            shutil.copyfile(copy, staged)
            os.replace(staged, newest)
            return f"{newest} was cut short (the driver was killed while saving it): restored from Tune's copy {copy}"
    if len(states) > 1:
        newest.rename(newest.with_name(newest.name + ".cut-short"))
        return (f"{newest} was cut short (the driver was killed while saving it) and no complete copy exists: "
                f"resuming from the previous state, {states[-2].name}")
    raise ConfigError(f"{newest}: {what} was cut short (the driver was killed while saving it) and no complete "
                      "copy exists; the sweep cannot be resumed, start it again")
