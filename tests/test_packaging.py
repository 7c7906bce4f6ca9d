"""The mapped packages (storage/, cli/, templates/) land inside maild in the wheel, and nothing else."""

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import ROOT


def test_wheel_holds_every_package_and_template(tmp_path: Path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("maild-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {n.split("/")[0] for n in names if not n.startswith("maild-")}
    assert tops == {"maild"}, tops  # nothing generic (storage, cli) in site-packages
    for module in ("maild/storage/models.py", "maild/storage/migrations/env.py",
                   "maild/storage/migrations/versions/0001_initial_schema.py", "maild/cli/main.py",
                   "maild/templates/config.toml"):
        assert module in names, module
    for template in (ROOT / "templates").rglob("*.txt"):
        rel = "maild/templates/" + template.relative_to(ROOT / "templates").as_posix()
        assert rel in names, rel
