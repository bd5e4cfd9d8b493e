"""pyproject.toml's package list: every package folder is installed, integrations/ and eval_tasks/ under the
package's own namespace (no top-level ``integrations`` or ``eval_tasks`` in site-packages)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"integrations": "jdnet_plugin.integrations", "eval_tasks": "jdnet_plugin.eval_tasks"}


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_listed_under_the_namespace():
    folders = set()
    for top in ("jdnet_plugin", *MAPPED):
        for init in (ROOT / top).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT).parts
            folders.add(".".join((MAPPED.get(top, top), *parts[1:])))
    cfg = _setuptools()
    assert set(cfg["packages"]) == folders
    assert cfg["package-dir"] == {name: folder for folder, name in MAPPED.items()}


def test_installed_names_do_not_collide(tmp_path):
    # Outside the checkout (so the working directory is not on sys.path): only the namespaced names import.
    code = ("import importlib.util as u, jdnet_plugin.integrations as i, jdnet_plugin.eval_tasks.common as c\n"
            "print(u.find_spec('integrations'), u.find_spec('eval_tasks'), i.__file__, c.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    none_i, none_e, i_file, c_file = out.stdout.split()
    assert (none_i, none_e) == ("None", "None")
    assert Path(i_file).parent.name == "integrations" and Path(c_file).parent.name == "eval_tasks"


def test_every_console_script_has_its_python_m_twin():
    import importlib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    modules = {p.stem for p in (ROOT / "jdnet_plugin" / "cli").glob("*.py") if not p.stem.startswith("_")}
    assert {target.split(":")[0].rsplit(".", 1)[1] for target in scripts.values()} == modules
    for name, target in scripts.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name
        twin = ROOT / "jdnet_plugin" / f"{module.rsplit('.', 1)[1]}.py"
        assert f"from {module} import main" in twin.read_text(), twin
