"""The newcomer's path: how pyepoll fails when its compiled core is missing
(a clone imported before the extension is built, or shadowing the installed
package, must say what happened and the ways out, not just "No module named
pyepoll._core"), and the scripts' per-checkout scratch folders."""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pyepoll

from conftest import SOURCE_TREE

PACKAGE = pathlib.Path(pyepoll.__file__).resolve().parent


def copy_without_core(dest: pathlib.Path) -> None:
    shutil.copytree(PACKAGE, dest / "pyepoll",
                    ignore=shutil.ignore_patterns("_core*", "__pycache__"))


def import_error(cwd: pathlib.Path) -> str:
    """stderr of `python -c "import pyepoll"` run in cwd, which must fail."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    # -S: no site, so no editable install's import hook sends pyepoll back
    # to the clone this suite runs from; cwd comes first on sys.path.
    proc = subprocess.run([sys.executable, "-S", "-c", "import pyepoll"],
                          cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0, proc.stdout
    return proc.stderr


def test_source_tree_without_core_says_why_and_the_two_ways_out(tmp_path):
    # A clone: pyepoll/ beside csrc/; the current directory comes first on
    # sys.path, as with `python -m pytest` run from the clone root.
    copy_without_core(tmp_path)
    (tmp_path / "csrc" / "include").mkdir(parents=True)
    (tmp_path / "csrc" / "include" / "pyepoll.h").write_text("/* marker */\n")
    err = import_error(tmp_path)
    last = err.strip().splitlines()[-1]
    assert last.startswith("ImportError: pyepoll was imported from its "
                           "source tree"), err
    assert str(tmp_path / "pyepoll") in last
    assert "pyepoll._core is not built" in last
    assert "pip install --no-build-isolation -e ." in last      # way out 1
    assert "outside the source tree" in last                     # way out 2
    assert "ModuleNotFoundError" not in err                      # no chain


def test_installed_copy_without_a_loadable_core_says_reinstall(tmp_path):
    # A core built for another Python (here: a name no Python loads).
    copy_without_core(tmp_path)
    (tmp_path / "pyepoll" / "_core.other-python.so").write_bytes(b"")
    last = import_error(tmp_path).strip().splitlines()[-1]
    assert last.startswith("ImportError: pyepoll at "), last
    assert "has only _core.other-python.so, built for another Python" in last
    assert "reinstall pyepoll-io" in last


def test_fuzz_scratch_folder_is_per_checkout(tmp_path):
    """Two clones fuzzed on one machine get scratch folders of their own (as
    test.sh's do), and one clone always the same."""
    script = SOURCE_TREE / "scripts" / "fuzz.sh"
    env = {k: v for k, v in os.environ.items() if k != "PYEPOLL_FUZZ_DIR"}

    def workdir(checkout: pathlib.Path) -> str:
        (checkout / "scripts").mkdir(parents=True, exist_ok=True)
        shutil.copy(script, checkout / "scripts" / "fuzz.sh")
        out = subprocess.run(
            ["bash", str(checkout / "scripts" / "fuzz.sh"), "--workdir"],
            env=env, capture_output=True, text=True, timeout=30, check=True)
        return out.stdout.strip()

    a, b = workdir(tmp_path / "a"), workdir(tmp_path / "b")
    assert a and b and a != b
    assert workdir(tmp_path / "a") == a
