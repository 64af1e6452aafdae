"""Check in a real browser that the links `pointtune ui` prints open MLflow's runs table, not MLflow 3's
GenAI overview.

Starts `pointtune ui DIR --port 0`, opens every runs-table link it prints in headless Chromium, and checks
the rendered page: the runs table (its "Run Name" column and "N matching runs"), not the overview. Writes a
screenshot of each page and ``ui_check.json`` to ``--output``, and prints PASS/FAIL per link.

    python bench/ui_check.py runs/demo                    # a sweep directory (e.g. from `make demo`)
    python bench/ui_check.py runs/demo --chromium /usr/bin/chromium

Needs Chromium (Debian: `apt-get install chromium`); not part of the test suite, which CI runs without a
browser. Exit status 0 when every link passes.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNS_TABLE = ("Run Name", "matching runs")  # what the runs table shows and the GenAI overview does not
LINK = re.compile(r"\[pointtune\]   (?P<name>\S+): (?P<url>http://\S+)")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1600,900"]


def _links(ui: subprocess.Popen, timeout_s: float) -> list[tuple[str, str]]:
    """The runs-table links `pointtune ui` prints, read from its output until it says MLflow is starting."""
    links, deadline = [], time.monotonic() + timeout_s
    for line in ui.stdout:
        found = LINK.search(line)
        if found:
            links.append((found["name"], found["url"]))
        elif links or time.monotonic() > deadline:
            break
    if not links:
        raise SystemExit("ui_check: `pointtune ui` printed no runs-table link")
    return links


def _wait_for_server(url: str, timeout_s: float) -> None:
    """Until MLflow's server answers at ``url`` (a bound wait: exits after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"ui_check: the MLflow UI did not answer at {url} within {timeout_s:g} s")


def _render(chromium: str, url: str, profile: Path, screenshot: Path, budget_ms: int) -> str:
    """The page's DOM after ``budget_ms`` of (virtual) time for its scripts; a screenshot of it too."""
    common = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}"]
    subprocess.run([*common, f"--screenshot={screenshot}", url], capture_output=True, timeout=120, check=False)
    return subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a sweep or run directory with its MLflow store")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--output", default=str(REPO / "runs" / "bench" / "ui_check"))
    parser.add_argument("--budget-ms", type=int, default=20000, help="time the page's scripts get to render")
    args = parser.parse_args()
    if not Path(args.chromium).exists():
        raise SystemExit(f"ui_check: no Chromium at {args.chromium} (Debian: apt-get install chromium)")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    ui = subprocess.Popen([sys.executable, "-m", "pointtune.cli", "ui", args.run_dir, "--port", "0"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    results = []
    try:
        links = _links(ui, timeout_s=60)
        _wait_for_server(links[0][1].split("/#/")[0] + "/", timeout_s=60)
        for name, url in links:
            screenshot = out / f"{name}.png"
            began = time.monotonic()
            dom = _render(args.chromium, url, out / "profile", screenshot, args.budget_ms)
            shown = {text: text in dom for text in RUNS_TABLE}
            passed = all(shown.values())
            results.append({"experiment": name, "url": url, "shown": shown, "passed": passed,
                            "screenshot": str(screenshot), "seconds": round(time.monotonic() - began, 1)})
            print(f"{'PASS' if passed else 'FAIL'}  {name}: {url}  {shown}  screenshot {screenshot}")
    finally:
        ui.terminate()
        ui.wait(timeout=30)
    (out / "ui_check.json").write_text(json.dumps(results, indent=2))
    print(f"[ui_check] {sum(r['passed'] for r in results)} of {len(results)} links passed; {out / 'ui_check.json'}")
    return 0 if results and all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
