"""moto's real S3 server in a child process, shared by the S3 tests.

A child process, not a thread: moto holds whole objects in memory on every GET, which would hide
whether our own code streams.
"""

import socket
import subprocess
import sys
from pathlib import Path

import boto3
from botocore.config import Config

BUCKET = "fs-crm-recordings"
REGION = "us-east-1"
ACCESS_KEY = "AKIATESTINGFSCRM0000"
SECRET = "fake-secret-4d1f8b2e-never-logged"
CAPTURES = Path(__file__).resolve().parent.parent / "fs_crm" / "sim" / "captures" / "pbx"
MB = 1024 * 1024

# ThreadedMotoServer accepts port=0; get_host_and_port() then tells the port the OS picked.
_MOTO_CHILD = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # serve until the test closes our stdin (or dies)
server.stop()
"""


class MotoProcess:
    def __init__(self, log_path: Path, port: int = 0):
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-c", _MOTO_CHILD, str(port)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log)
        line = self.proc.stdout.readline()
        if not line.strip():
            self.stop()
            raise RuntimeError("moto server did not start: %s" % log_path.read_text(errors="replace")[-2000:])
        self.port = int(line)
        self.endpoint = "http://127.0.0.1:%d" % self.port

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self._log.close()


def admin_client(endpoint: str):
    """A plain boto3 client to set up and inspect the bucket behind S3Store's back."""
    session = boto3.session.Session(aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET,
                                    region_name=REGION)
    return session.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# AWS settings that would point boto3 at somebody's real account or change its retries.
FOREIGN_AWS_SETTINGS = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                        "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE")


def fake_aws_environment(scratch: Path) -> dict[str, str]:
    """Fake credentials, as production gets real ones through the environment; with the settings
    above removed, nothing from a developer's ~/.aws or an instance role can leak in."""
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": str(scratch / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(scratch / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true"}


def use_fake_aws_credentials(monkeypatch, tmp_path) -> None:
    for name in FOREIGN_AWS_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    for name, value in fake_aws_environment(tmp_path).items():
        monkeypatch.setenv(name, value)
