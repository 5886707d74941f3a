"""The operator's starter files that ship inside the package, and `fs-crm init DIR`, which writes them out.

They are the repository's conf/: the example config, the systemd unit and the FreeSWITCH snippets.
`fs_crm/conf` is a symbolic link to it, so conf/ stays the one copy anybody edits, a checkout and an
editable install read it through the link, and a wheel or an sdist carries real files in its place
(setup.cfg package_data).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

# `fs-crm init /etc/fs-crm` leaves the example config where the systemd unit reads it.
CONFIG_NAME = "fs-crm.toml"
EXAMPLE_NAME = "fs-crm.example.toml"
UNIT_NAME = "fs-crm.service"


class ConfFilesMissing(Exception):
    """This installation of fs-crm carries no conf files (a broken or hand-made install)."""


@dataclass(frozen=True)
class Written:
    path: Path
    action: str  # "wrote", "overwrote" or "kept" (it existed and --force was not given)


def shipped() -> list[tuple[str, Traversable]]:
    """(name inside DIR, packaged file) for every file `fs-crm init` writes."""
    root = resources.files("fs_crm") / "conf"
    files: list[tuple[str, Traversable]] = [(CONFIG_NAME, root / EXAMPLE_NAME), (UNIT_NAME, root / UNIT_NAME)]
    snippets = root / "freeswitch"
    if snippets.is_dir():
        files += sorted(("freeswitch/" + f.name, f) for f in snippets.iterdir() if f.name.endswith(".xml"))
    missing = [source.name for _, source in files if not source.is_file()]
    if missing or len(files) < 3:
        raise ConfFilesMissing("this fs-crm has no %s in %s: reinstall it" % (", ".join(missing) or "FreeSWITCH snippets",
                                                                           root))
    return files


def write_conf(directory: Path, force: bool = False) -> list[Written]:
    """Write the shipped files into `directory` (created if missing). An existing file is kept
    unless `force`; then it is replaced in one rename, never half-written. Raises OSError."""
    directory = Path(directory)
    done = []
    for name, source in shipped():
        target = directory / name
        existed = target.exists() or target.is_symlink()
        if existed and not force:
            done.append(Written(target, "kept"))
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        data = source.read_bytes()
        if existed:
            # Replaces a symlink itself rather than writing to wherever it points.
            scratch = target.with_name(".%s.init-%d" % (target.name, os.getpid()))
            try:
                scratch.write_bytes(data)
                os.replace(scratch, target)
            except OSError:
                scratch.unlink(missing_ok=True)
                raise
        else:
            with open(target, "xb") as out:  # x: a file that appeared meanwhile is not clobbered
                out.write(data)
        done.append(Written(target, "overwrote" if existed else "wrote"))
    return done
