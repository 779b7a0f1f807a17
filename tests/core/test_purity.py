"""core/ is pure: importing it loads no I/O framework, and it reads no clock."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

FORBIDDEN = ["aiohttp", "redis", "simpy", "pysyncobj", "asyncio", "node", "sim"]
CORE = pathlib.Path(__file__).resolve().parents[2] / "core"


def test_importing_core_loads_no_io_framework() -> None:
    code = (
        "import sys, importlib, pkgutil, core\n"
        "for m in pkgutil.iter_modules(core.__path__):\n"
        "    importlib.import_module('core.' + m.name)\n"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "", f"importing core loaded {out.stdout.strip()}"


def test_core_source_reads_no_clock_and_no_unseeded_random() -> None:
    pattern = re.compile(
        r"time\.(time|monotonic|perf_counter)|datetime\.now|random\.(random|randint|choice|"
        r"uniform|shuffle)\(|^\s*(import|from) (asyncio|aiohttp|redis|simpy|pysyncobj|node|sim)\b",
        re.M,
    )
    offenders = []
    for path in sorted(CORE.glob("*.py")) + sorted(CORE.glob("*.pyx")):
        for m in pattern.finditer(path.read_text()):
            offenders.append(f"{path.name}: {m.group(0)}")
    assert not offenders, offenders
