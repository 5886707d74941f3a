"""LocalStore on its own: atomic writes, sidecar metadata, ranges, refused keys."""

import datetime as dt
import json
import os
import stat

import pytest
from audio import write_wav

from recordings.base import RecordingNotFound, StorageUnavailable
from recordings.local import META_SUFFIX, LocalStore

KEY = "shop/2024/05/17/5f0c-call.wav"


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "recordings")


@pytest.fixture
def wav(tmp_path):
    return write_wav(tmp_path / "source.wav")


def test_given_a_file_when_put_then_head_describes_it(store, wav):
    stored = store.put_file(wav, KEY, "audio/wav", {"call": "5f0c-call"})

    assert stored.key == KEY
    assert stored.size == wav.stat().st_size
    assert stored.content_type == "audio/wav"
    assert stored.etag.startswith('"') and stored.etag.endswith('"')
    assert stored.last_modified.tzinfo is not None
    assert stored.last_modified.utcoffset() == dt.timedelta(0)
    assert store.head(KEY) == stored
    assert (store.directory / KEY).read_bytes() == wav.read_bytes()


def test_when_put_then_sidecar_holds_content_type_and_metadata(store, wav):
    store.put_file(wav, KEY, "audio/x-custom", {"account": "shop"})

    sidecar = json.loads((store.directory / (KEY + META_SUFFIX)).read_text())
    assert sidecar == {"content_type": "audio/x-custom", "metadata": {"account": "shop"}}
    assert store.head(KEY).content_type == "audio/x-custom"


def test_given_no_sidecar_when_head_then_content_type_from_extension(store, wav):
    store.put_file(wav, KEY, "audio/wav", {})
    (store.directory / (KEY + META_SUFFIX)).unlink()

    assert store.head(KEY).content_type == "audio/wav"


def test_when_read_then_whole_object_in_chunks(store, wav):
    store.put_file(wav, KEY, "audio/wav", {})
    data = wav.read_bytes()

    chunks = list(store.read(KEY, 0, len(data) - 1, chunk_size=1000))

    assert b"".join(chunks) == data
    assert max(len(c) for c in chunks) == 1000


@pytest.mark.parametrize("start,end", [(0, 0), (10, 99), (44, 44 + 5000), (15000, 15999)])
def test_when_read_a_range_then_exact_bytes(store, wav, start, end):
    store.put_file(wav, KEY, "audio/wav", {})
    data = wav.read_bytes()

    assert b"".join(store.read(KEY, start, end, chunk_size=333)) == data[start:end + 1]


def test_given_missing_key_when_head_or_read_then_not_found(store):
    with pytest.raises(RecordingNotFound):
        store.head(KEY)
    # Raised by the call itself, before any chunk is asked for.
    with pytest.raises(RecordingNotFound):
        store.read(KEY, 0, 10)


def test_given_missing_source_when_put_then_not_found(store, tmp_path):
    with pytest.raises(RecordingNotFound):
        store.put_file(tmp_path / "nope.wav", KEY, "audio/wav", {})


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_given_unreadable_source_when_put_then_not_found(store, wav):
    wav.chmod(0)
    with pytest.raises(RecordingNotFound):
        store.put_file(wav, KEY, "audio/wav", {})


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_given_read_only_directory_when_put_then_unavailable(store, wav):
    store.directory.mkdir()
    store.directory.chmod(0o500)
    try:
        with pytest.raises(StorageUnavailable):
            store.put_file(wav, KEY, "audio/wav", {})
        with pytest.raises(StorageUnavailable):
            store.check()
    finally:
        store.directory.chmod(0o700)


def test_given_a_file_where_the_directory_should_be_when_check_then_unavailable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageUnavailable):
        LocalStore(blocker).check()
    with pytest.raises(StorageUnavailable):
        LocalStore(blocker / "sub").check()


def test_when_check_then_directory_created(store):
    store.check()
    assert store.directory.is_dir()
    assert list(store.directory.iterdir()) == []


@pytest.mark.parametrize("key", [
    "/etc/passwd",
    "../outside.wav",
    "shop/../../outside.wav",
    "shop/2024/..",
    "shop\\2024\\x.wav",
    "shop/x\0.wav",
    "",
    "shop//x.wav",
    "shop/x.wav/",
    "shop/x.wav" + META_SUFFIX,
])
def test_given_a_bad_key_then_refused(store, wav, key):
    with pytest.raises(ValueError):
        store.put_file(wav, key, "audio/wav", {})
    with pytest.raises(ValueError):
        store.head(key)
    with pytest.raises(ValueError):
        store.read(key, 0, 1)


def test_given_a_symlink_out_of_the_directory_then_refused(store, tmp_path, wav):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.wav").write_bytes(wav.read_bytes())
    store.directory.mkdir()
    (store.directory / "shop").symlink_to(outside)

    with pytest.raises(ValueError):
        store.head("shop/x.wav")


def test_given_a_bad_content_type_then_refused(store, wav):
    with pytest.raises(ValueError):
        store.put_file(wav, KEY, "audio/wav\r\nX-Evil: 1", {})


def test_given_an_object_when_put_again_then_replaced_atomically(store, tmp_path, wav):
    first = store.put_file(wav, KEY, "audio/wav", {})
    reader = store.read(KEY, 0, first.size - 1, chunk_size=100)
    old_bytes = wav.read_bytes()
    longer = write_wav(tmp_path / "longer.wav", seconds=2)

    second = store.put_file(longer, KEY, "audio/wav", {})

    assert second.size == longer.stat().st_size != first.size
    assert second.etag != first.etag
    assert store.head(KEY) == second
    # The rename left an open reader on the old file, complete.
    assert b"".join(reader) == old_bytes
    assert b"".join(store.read(KEY, 0, second.size - 1)) == longer.read_bytes()
    # No temporary files are left behind.
    assert sorted(p.name for p in (store.directory / KEY).parent.iterdir()) == ["5f0c-call.wav", "5f0c-call.wav" + META_SUFFIX]


def test_given_a_failing_copy_then_old_object_intact_and_no_temp_left(store, tmp_path, wav, monkeypatch):
    store.put_file(wav, KEY, "audio/wav", {})
    other = write_wav(tmp_path / "other.wav", seconds=2)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(StorageUnavailable):
        store.put_file(other, KEY, "audio/wav", {})
    monkeypatch.undo()

    assert (store.directory / KEY).read_bytes() == wav.read_bytes()
    assert not [p for p in store.directory.rglob("*") if p.name.endswith(".tmp")]


def test_when_read_iterator_closed_early_then_file_closed(store, wav):
    store.put_file(wav, KEY, "audio/wav", {})
    chunks = store.read(KEY, 0, 9999, chunk_size=10)
    next(chunks)
    chunks.close()
    assert list(chunks) == []


def test_given_a_directory_as_source_when_put_then_not_found(store, tmp_path):
    with pytest.raises(RecordingNotFound):
        store.put_file(tmp_path, KEY, "audio/wav", {})


def test_given_permission_denied_on_the_store_when_put_then_unavailable(store, wav, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("recordings.local.tempfile.mkstemp", denied)
    with pytest.raises(StorageUnavailable):
        store.put_file(wav, KEY, "audio/wav", {})
    with pytest.raises(StorageUnavailable):
        store.check()


# --- modes, whatever the umask ------------------------------------------------------------------

@pytest.fixture(params=[0, 0o077], ids=["umask000", "umask077"])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_given_any_umask_when_put_then_recording_and_sidecar_0640_and_created_dirs_0750(store, wav, umask):
    store.put_file(wav, KEY, "audio/wav", {})

    target = store.directory / KEY
    assert mode(target) == 0o640
    assert mode(target.with_name(target.name + META_SUFFIX)) == 0o640
    created = [store.directory, *(store.directory / part for part in ("shop", "shop/2024", "shop/2024/05",
                                                                      "shop/2024/05/17"))]
    assert [mode(d) for d in created] == [0o750] * len(created)


def test_given_any_umask_when_check_creates_the_directory_then_0750(store, umask):
    store.check()
    assert mode(store.directory) == 0o750
