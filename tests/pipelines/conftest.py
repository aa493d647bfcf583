import logging
import os
import socket
import uuid

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# The local S3 server's endpoint and credentials are in the environment before any Ray instance
# starts, so Ray workers inherit them as a cluster node inherits its own: the jobs read them from
# the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...) exactly as they would against real S3.
S3_PORT = _free_loopback_port()
S3_SECRET = f"test-secret-{uuid.uuid4().hex}"
os.environ.update(
    {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
        "AWS_ACCESS_KEY_ID": "loopcoder-test-key",
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
)
for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
    os.environ.pop(name, None)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole test session (jobs run inside it reuse it)."""
    import ray
    from ray.data import DataContext

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from ray.data.context import ShuffleStrategy

    context = DataContext.get_current()
    context.enable_progress_bars = False
    # the jobs' default (`ray.shuffle_strategy: sort`), for tests that call the dedup stages directly
    context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    yield ray
    if started:
        ray.shutdown()


class LocalS3:
    """moto's S3 server on a loopback port."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint

    def bucket(self) -> str:
        """A new empty bucket, as `s3://name`."""
        import pyarrow.fs as pafs

        name = f"test-{uuid.uuid4().hex[:12]}"
        pafs.S3FileSystem(endpoint_override=self.endpoint, allow_bucket_creation=True).create_dir(name)
        return f"s3://{name}"


@pytest.fixture(scope="session")
def s3_server():
    """The local S3 server, started once for the session and stopped at its end."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    yield LocalS3(os.environ["AWS_ENDPOINT_URL"])
    server.stop()


@pytest.fixture
def s3_bucket(s3_server) -> str:
    return s3_server.bucket()
