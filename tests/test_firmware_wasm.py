"""The supervisor firmware's scenarios on the real MicroPython interpreter (WebAssembly, node).

CPython is more forgiving than MicroPython (dataclasses, typing, f-string ``=``, many stdlib
modules); running the very same scenarios (firmware/tests/scenarios.py) on MicroPython 1.27
keeps anything CPython-only out of the firmware. Needs node and npm: without them this test
fails, it does not skip — CI must not go green without having run the firmware on MicroPython.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware"
PKG = "@micropython/micropython-webassembly-pyscript"


def _scenario_count() -> int:
    sys.path.insert(0, str(FIRMWARE / "supervisor"))
    sys.path.insert(0, str(FIRMWARE / "tests"))
    import scenarios  # firmware modules are found by path, not as a package

    return len(scenarios.all_scenarios())


def test_firmware_scenarios_pass_on_micropython() -> None:
    node = shutil.which("node")
    npm = shutil.which("npm")
    assert node, "node is required to run the firmware tests on MicroPython (apt install nodejs)"
    assert npm, "npm is required to install the MicroPython WebAssembly port (apt install npm)"
    if not (FIRMWARE / "node_modules" / PKG / "micropython.mjs").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=FIRMWARE, check=True,
                       timeout=600)
    proc = subprocess.run([node, "tests/run_micropython.mjs"], cwd=FIRMWARE,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert "MicroPython v1.27" in out, out[-3000:]
    found = re.findall(r"^MP-TESTS (\d+) passed (\d+) failed$", proc.stdout, re.MULTILINE)
    assert found, out[-3000:]
    passed, failed = (int(x) for x in found[-1])
    assert failed == 0, out[-3000:]
    assert passed == _scenario_count(), out[-3000:]
    assert proc.returncode == 0, out[-3000:]
