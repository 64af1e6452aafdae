"""pointtune.reaper: what a killed driver started dies with it, and nothing else does."""

import os
import signal
import subprocess
import sys
import time

from pointtune.reaper import descendants

DRIVER = """
import subprocess, sys, time
from pointtune.reaper import start_reaper
grandchild = "import time; time.sleep(120)"
child = subprocess.Popen([sys.executable, "-c",
                          f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {grandchild!r}]); time.sleep(120)"])
start_reaper()
print(child.pid, flush=True)
time.sleep(120)
"""


def _gone(pids, timeout=10.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not any(os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0]
                   not in "ZX" for p in pids if os.path.exists(f"/proc/{p}")):
            return True
        time.sleep(0.1)
    return False


def test_a_killed_driver_takes_its_descendants_along():
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True)
    try:
        child = int(driver.stdout.readline())
        deadline = time.time() + 20
        while len(descendants({child})) < 1 and time.time() < deadline:   # the grandchild is up
            time.sleep(0.05)
        time.sleep(0.6)                                                    # the reaper has noted them
        family = {child} | descendants({child})
        assert len(family) == 2
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        assert _gone(family), "the driver's descendants outlived it"
        assert bystander.poll() is None                                    # not descended from the driver
    finally:
        bystander.kill()
        driver.kill()
