"""What an install carries: `fs-crm --version`, `fs-crm init`, and the wheel and sdist themselves.

The sdist and the wheel are built once per session from a copy of the source tree (so no build/ or
egg-info lands in the checkout), the wheel from the sdist, as pip builds it on a machine without
the repository. The installed wheel then has to write the conf files and run the demo on its own.
"""

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import fs_crm
from fs_crm.demo import DEMO_CALLS
from fs_crm.sim.calls import RECORDING
from fs_crm.sim.fake_freeswitch import capture_path

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
# What `fs-crm init DIR` writes, by name in DIR, from conf/.
CONF_FILES = {"fs-crm.toml": CONF / "fs-crm.example.toml", "fs-crm.service": CONF / "fs-crm.service",
              **{"freeswitch/" + p.name: p for p in sorted((CONF / "freeswitch").glob("*.xml"))}}
# The only captures the wheel needs: the calls the demo plays and the recording it serves.
DEMO_DATA = sorted({capture_path(scenario).relative_to(REPO).as_posix() for scenario, _ in DEMO_CALLS}
                   | {RECORDING.relative_to(REPO).as_posix(), "fs_crm/sim/captures/pbx/README.md"})
# Left out of the copy the builds start from: what a fresh clone does not have.
NOT_IN_A_CLONE = (".git", ".venv", "build", "*.egg-info", "__pycache__", ".ruff_cache", ".pytest_cache", "*.so")
SETUPTOOLS_WARNINGS = ("SetuptoolsDeprecationWarning", "BuildBackendWarning", "SetuptoolsWarning",
                       "is absent from the `packages` configuration", "********")


def fs_crm_cli(*args, cwd, env_extra=None):
    return subprocess.run([sys.executable, "-m", "fs_crm", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env={**os.environ, **(env_extra or {})})


# --- from the checkout ---------------------------------------------------------------------------

def test_version_prints_the_package_version(tmp_path):
    result = fs_crm_cli("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "fs-crm %s\n" % fs_crm.__version__


def test_given_empty_dir_when_init_then_every_conf_file_written_and_said(tmp_path):
    target = tmp_path / "etc" / "fs-crm"
    result = fs_crm_cli("init", str(target), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name, source in CONF_FILES.items():
        assert (target / name).read_bytes() == source.read_bytes(), name
        assert "wrote %s\n" % (target / name) in result.stdout
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == sorted(CONF_FILES)
    assert "fs-crm check --offline -c %s" % (target / "fs-crm.toml") in result.stdout


def test_given_existing_files_when_init_then_kept_unless_force(tmp_path):
    (tmp_path / "freeswitch").mkdir()
    (tmp_path / "fs-crm.toml").write_text("# the operator's own\n")
    (tmp_path / "freeswitch" / "routing.xml").write_text("<include/>\n")
    kept = fs_crm_cli("init", str(tmp_path), cwd=tmp_path)
    assert kept.returncode == 0, kept.stderr
    assert (tmp_path / "fs-crm.toml").read_text() == "# the operator's own\n"
    assert "kept %s (it exists; --force overwrites it)" % (tmp_path / "fs-crm.toml") in kept.stdout
    assert "kept %s (it exists" % (tmp_path / "freeswitch" / "routing.xml") in kept.stdout
    assert "wrote %s\n" % (tmp_path / "fs-crm.service") in kept.stdout

    forced = fs_crm_cli("init", "--force", str(tmp_path), cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / "fs-crm.toml").read_bytes() == CONF_FILES["fs-crm.toml"].read_bytes()
    assert "overwrote %s\n" % (tmp_path / "fs-crm.toml") in forced.stdout
    assert not [p for p in tmp_path.rglob(".*init-*")]  # no scratch file left behind


def test_given_unwritable_target_when_init_then_one_line_and_exit_1(tmp_path):
    (tmp_path / "a-file").write_text("")
    result = fs_crm_cli("init", str(tmp_path / "a-file" / "conf"), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("fs-crm init: cannot write %s" % (tmp_path / "a-file")), result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_packaged_conf_is_the_repository_conf():
    """fs_crm/conf is a link to conf/, so the package data can never drift from it."""
    link = REPO / "fs_crm" / "conf"
    assert link.is_symlink() and link.resolve() == CONF.resolve()


# --- the sdist and the wheel ----------------------------------------------------------------------

@pytest.fixture(scope="session")
def dists(tmp_path_factory):
    """(sdist or None, wheel, build output): the sdist from a clone-like copy, the wheel from the sdist."""
    import shutil

    work = tmp_path_factory.mktemp("dists")
    src = work / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(*NOT_IN_A_CLONE))
    out = work / "out"
    # The venv's own setuptools builds the sdist (pip builds wheels only); without one (Python 3.12+
    # venvs have none) the wheel is built from the source copy and the sdist test skips.
    sdist = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                            "print(build_meta.build_sdist(sys.argv[1]))", str(out)],
                           cwd=src, capture_output=True, text=True, timeout=120)
    no_setuptools = sdist.returncode != 0 and "No module named 'setuptools'" in sdist.stderr
    assert sdist.returncode == 0 or no_setuptools, sdist.stdout + sdist.stderr
    sdist_path = None if no_setuptools else out / sdist.stdout.split()[-1]
    wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(out),
                            str(sdist_path or src)], capture_output=True, text=True, timeout=240)
    assert wheel.returncode == 0, wheel.stdout[-3000:] + wheel.stderr[-3000:]
    wheel_path = next(out.glob("fs_crm-*.whl"))
    return sdist_path, wheel_path, sdist.stdout + sdist.stderr + wheel.stdout + wheel.stderr


def test_wheel_carries_the_conf_files_and_of_the_captures_only_the_demo_data(dists):
    _, wheel, _ = dists
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        assert {"fs_crm/conf/" + p.relative_to(CONF).as_posix() for p in CONF_FILES.values()} <= names
        assert sorted(n for n in names if "/captures/" in n) == DEMO_DATA
        assert not [n for n in names if n.startswith("tests/") or n.endswith(".c")]
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
        metadata = whl.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Version: %s\n" % fs_crm.__version__ in metadata and "License: MIT\n" in metadata


def test_sdist_carries_conf_and_license_but_no_test_suite(dists):
    sdist, _, _ = dists
    if sdist is None:
        pytest.skip("this venv has no setuptools to build an sdist with")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert {"LICENSE", "conf/fs-crm.service", "conf/fs-crm.example.toml", "fs_crm/freeswitch/_eslindex.c"} <= names
    assert {"conf/freeswitch/" + p.name for p in (CONF / "freeswitch").glob("*.xml")} <= names
    assert not [n for n in names if n.startswith("tests/") or "/captures/live/" in n]


def test_build_gives_no_setuptools_warnings(dists):
    _, _, output = dists
    assert not [w for w in SETUPTOOLS_WARNINGS if w in output], output[-5000:]


def test_installed_wheel_writes_its_conf_files_and_runs_the_demo(dists, tmp_path):
    """Nothing of the checkout is reachable: the files come out of the wheel's own package data."""
    _, wheel, _ = dists
    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target",
                                str(site), str(wheel)], capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    env = {"PYTHONPATH": str(site)}  # ahead of this venv's editable fs-crm
    where = fs_crm_cli("--version", cwd=tmp_path, env_extra=env)
    assert where.stdout == "fs-crm %s\n" % fs_crm.__version__
    probe = subprocess.run([sys.executable, "-c", "import fs_crm; print(fs_crm.__file__)"], capture_output=True,
                           text=True, cwd=tmp_path, env={**os.environ, **env}, timeout=30)
    assert probe.stdout.strip() == str(site / "fs_crm" / "__init__.py")

    init = fs_crm_cli("init", str(tmp_path / "conf"), cwd=tmp_path, env_extra=env)
    assert init.returncode == 0, init.stderr
    for name, source in CONF_FILES.items():
        assert (tmp_path / "conf" / name).read_bytes() == source.read_bytes(), name

    demo = fs_crm_cli("demo", cwd=tmp_path, env_extra=env)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "OK: 5 calls in the CRM history" in demo.stdout
