"""fs_crm.filemodes on the real file system: the modes come out the same under any umask."""

import os
import sqlite3
import stat

import pytest

from fs_crm.filemodes import create_private_file, make_dirs, open_new_file, private_dir

UMASKS = [0, 0o022, 0o077]


@pytest.fixture(params=UMASKS, ids=lambda m: "umask%03o" % m)
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_given_missing_dir_and_parents_when_private_dir_then_all_created_0700(tmp_path, umask):
    state = tmp_path / "var" / "lib" / "fs-crm"
    private_dir(state)
    assert [mode(p) for p in (tmp_path / "var", tmp_path / "var" / "lib", state)] == [0o700] * 3


def test_given_existing_wide_dir_when_private_dir_then_narrowed_to_0700(tmp_path, umask):
    os.chmod(tmp_path, 0o755)
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o777)
    private_dir(state)
    assert mode(state) == 0o700
    assert mode(tmp_path) == 0o755  # an existing parent is not the state dir: left alone


def test_given_missing_dirs_when_make_dirs_then_created_ones_get_the_mode_existing_ones_kept(tmp_path, umask):
    os.chmod(tmp_path, 0o755)
    leaf = tmp_path / "shop" / "2024" / "05"
    make_dirs(leaf, 0o750)
    make_dirs(leaf, 0o750)  # twice: nothing to do
    assert [mode(tmp_path), mode(tmp_path / "shop"), mode(tmp_path / "shop" / "2024"), mode(leaf)] == \
        [0o755, 0o750, 0o750, 0o750]


def test_given_a_file_in_the_way_when_make_dirs_then_os_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError):
        make_dirs(tmp_path / "file", 0o750)
    with pytest.raises(FileExistsError):
        make_dirs(tmp_path / "file" / "below", 0o750)


def test_given_no_file_when_create_private_file_then_empty_0600(tmp_path, umask):
    path = tmp_path / "outbox.sqlite3"
    create_private_file(path)
    assert mode(path) == 0o600 and path.read_bytes() == b""


def test_given_wide_file_when_create_private_file_then_0600_and_content_kept(tmp_path, umask):
    path = tmp_path / "outbox.sqlite3"
    path.write_bytes(b"kept")
    os.chmod(path, 0o666)
    create_private_file(path)
    assert mode(path) == 0o600 and path.read_bytes() == b"kept"


def test_given_private_file_when_sqlite_opens_it_in_wal_mode_then_wal_and_shm_are_0600_too(tmp_path, umask):
    state = tmp_path / "state"
    private_dir(state)
    path = state / "outbox.sqlite3"
    create_private_file(path)
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (x)")
        db.execute("INSERT INTO t VALUES (1)")
        db.commit()
        made = sorted(p.name for p in state.iterdir())
        assert made == ["outbox.sqlite3", "outbox.sqlite3-shm", "outbox.sqlite3-wal"]
        assert {name: mode(state / name) for name in made} == dict.fromkeys(made, 0o600)
    finally:
        db.close()


def test_given_leftover_file_with_another_mode_when_open_new_file_then_truncated_with_exact_mode(tmp_path, umask):
    path = tmp_path / "secret.tmp"
    path.write_bytes(b"old content")
    os.chmod(path, 0o644)
    fd = open_new_file(path, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(b"new")
    assert mode(path) == 0o600 and path.read_bytes() == b"new"


def test_given_any_umask_when_the_service_runs_then_state_dir_0700_and_its_files_0600(fakes, tmp_path, umask):
    from e2e import make_config

    from fs_crm.service import Service

    fs, crm = fakes
    state = tmp_path / "state"
    svc = Service(make_config(fs, crm, state, storage={"backend": "local", "directory": str(tmp_path / "store")}))
    svc.start()
    try:
        assert fs.wait_subscribed(timeout=10)
    finally:
        svc.stop()
    files = sorted(p.name for p in state.iterdir())
    assert "outbox.sqlite3" in files
    assert mode(state) == 0o700
    assert {name: mode(state / name) for name in files} == {name: 0o600 for name in files}
