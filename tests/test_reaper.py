"""pointtune.reaper: what a killed driver started dies with it, and nothing else does."""

import os
import signal
import subprocess
import sys

from helpers import reaper_notes, running, wait_until
from pointtune.reaper import NOTES_ENV, descendants

# The sleeps below are how long the processes live (the test kills them all), not synchronisation.
DRIVER = """
import subprocess, sys, time
from pointtune.reaper import start_reaper
grandchild = "import time; time.sleep(600)"
child = subprocess.Popen([sys.executable, "-c",
                          f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {grandchild!r}]); time.sleep(600)"])
start_reaper()
print(child.pid, flush=True)
time.sleep(600)
"""


def test_a_killed_driver_takes_its_descendants_along(tmp_path):
    notes = tmp_path / "reaper.json"
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, NOTES_ENV: str(notes)})
    try:
        line = driver.stdout.readline()
        assert line, "the driver exited before starting its child"
        child = int(line)
        assert reaper_notes(notes)["driver"] == driver.pid  # start_reaper returned after the first scan

        def noted() -> bool:  # the grandchild is up and the reaper has noted both
            family = {child} | descendants({child})
            return len(family) == 2 and family <= set(reaper_notes(notes)["noted"])

        wait_until(noted, "the reaper to note the driver's child and grandchild")
        family = {child} | descendants({child})
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        wait_until(lambda: not any(running(p) for p in family), f"the driver's descendants {sorted(family)} to die")
        assert bystander.poll() is None  # not descended from the driver
    finally:
        bystander.kill()
        driver.kill()
