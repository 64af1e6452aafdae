"""The sweep's status box on the console: Tune's trial table without the lines that say nothing to a user."""

from __future__ import annotations

from ray import tune

LOGDIR_LINE = "Result logdir: "  # Tune's session directory under /tmp/ray, not the sweep's


class StatusTable(tune.CLIReporter):
    """Tune's :class:`~ray.tune.CLIReporter` (status header, trial table sorted by the objective, errors)
    without its ``Current best trial: ... parameters={...}`` line (the table's first row is the best trial,
    with the searched values; the sweep's summary names it at the end) and its ``Result logdir:`` line (Ray's
    session directory; the sweep's own is printed when it starts)."""

    def _current_best_trial(self, trials):
        """No best-trial line (Tune prints one when this returns a trial)."""
        return None, None

    def report(self, trials, done: bool, *sys_info: str) -> None:
        """Print the status box (see the class docstring)."""
        text = self._progress_str(trials, done, *sys_info)
        self._print("\n".join(line for line in text.split("\n") if not line.startswith(LOGDIR_LINE)))
