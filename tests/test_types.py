"""mypy strict over the package as it installs: bertrt, with export/ as bertrt.export and
benchmarks/ as bertrt.bench.

setuptools maps those two folders into the package (``package-dir`` in pyproject.toml),
which mypy cannot follow from the source tree: there, `python -m mypy` sees them as missing.
This test copies the sources into a temporary folder the way setuptools installs them and
runs mypy there with the project's own configuration, so the export stage's and the
benchmarks' functions (those the CLI calls included) are checked with their real types.
A cold mypy run over the ~80 files: 20-25 s on the shared 2-core machine (measured under load).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = "bertrt/_type_probe.py"
# Calls that break the signatures of the functions the CLI calls. Each marked line must be
# reported: a module that mypy failed to resolve would be Any and let it pass silently.
PROBE_SOURCE = """\
from pathlib import Path

from bertrt.bench.config import BenchConfig
from bertrt.bench.harness import run_benchmark
from bertrt.cli.render import eval_text, export_summary_text, validation_table
from bertrt.export.evaluate import EvalConfig, evaluate
from bertrt.export.request import ExportRequest, run_export
from bertrt.export.revalidate import ValidateConfig, validate_bundle
from bertrt.types import Task

run_export(ExportRequest(out="models/x"))  # error
validate_bundle(Path("models/x"))  # error
evaluate(EvalConfig(task="qa", bundle=Path("models/x")))  # error
len(evaluate(EvalConfig(Task.QA, Path("models/x"))).no_such_attribute)  # error
run_benchmark(BenchConfig(bundle=Path("models/x"), threads="2"))  # error
export_summary_text(Path("models/x"))  # error
validation_table([Path("models/x")])  # error
eval_text(["qa"])  # error
"""


def installed_layout(root: Path, dest: Path) -> None:
    """Copy each package listed in ``root``'s pyproject.toml to ``dest``, from the folder
    setuptools takes it from (its ``package-dir`` entry or its parent's) to the folder it
    installs to, as setuptools does: the modules of the listed packages and py.typed."""
    setuptools = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    package_dir: dict[str, str] = setuptools.get("package-dir", {})
    for package in setuptools["packages"]:
        parts = package.split(".")
        source = root.joinpath(*parts)
        for cut in range(len(parts), 0, -1):
            mapped = package_dir.get(".".join(parts[:cut]))
            if mapped is not None:
                source = root.joinpath(mapped, *parts[cut:])
                break
        target = dest.joinpath(*parts)
        target.mkdir(parents=True, exist_ok=True)
        for file in [*source.glob("*.py"), *source.glob("py.typed")]:
            shutil.copy2(file, target / file.name)


def test_the_layout_follows_package_dir(tmp_path: Path) -> None:
    installed_layout(ROOT, tmp_path)
    assert (tmp_path / "bertrt/export/pipeline.py").read_bytes() == (ROOT / "export/pipeline.py").read_bytes()
    assert (tmp_path / "bertrt/bench/harness.py").is_file() and (tmp_path / "bertrt/cli/render.py").is_file()
    assert not (tmp_path / "export").exists() and not (tmp_path / "benchmarks").exists()


def test_mypy_strict_passes_on_the_installed_layout(tmp_path: Path) -> None:
    installed_layout(ROOT, tmp_path)
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / PROBE).write_text(PROBE_SOURCE, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "pyproject.toml", "--cache-dir", str(tmp_path / ".cache")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    reported = re.findall(r"^(\S+?):(\d+): error:", done.stdout, flags=re.MULTILINE)
    outside_probe = [f"{path}:{line}" for path, line in reported if path != PROBE]
    assert outside_probe == [], done.stdout
    marked = {n for n, line in enumerate(PROBE_SOURCE.splitlines(), start=1) if line.endswith("# error")}
    assert {int(line) for _, line in reported} == marked, done.stdout
