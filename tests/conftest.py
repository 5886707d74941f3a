# gevent must patch the standard library before anything else imports socket or threading,
# exactly as the service does at start-up (fs_crm.cli).
from gevent import monkey

monkey.patch_all()

import pytest  # noqa: E402
from e2e import start_fakes  # noqa: E402

from fs_crm.store.outbox import FILE_NAME, Outbox  # noqa: E402


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self, now=1_700_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def outbox(state_dir, clock):
    box = Outbox(state_dir / FILE_NAME, clock=clock)
    yield box
    box.close()


@pytest.fixture
def fakes():
    """A fake FreeSWITCH and a fake retailCRM on loopback ports."""
    fs, crm = start_fakes()
    yield fs, crm
    fs.stop()
    crm.stop()


@pytest.fixture
def state_dir(tmp_path):
    path = tmp_path / "state"
    path.mkdir()
    return path
