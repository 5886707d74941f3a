# gevent must patch the standard library before anything else imports socket or threading,
# exactly as the service does at start-up (fs_crm.cli).
from gevent import monkey

monkey.patch_all()

import pytest  # noqa: E402


@pytest.fixture
def state_dir(tmp_path):
    path = tmp_path / "state"
    path.mkdir()
    return path
