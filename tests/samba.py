"""A real Samba server for the tests (images, the option table): smbd on 127.0.0.1 at a
high port, with a throwaway configuration, share and user, started once per test
session (as root)."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SMB_USER = "p2pclone-smb"
SMB_PASSWORD = "Pass-for-tests-1"


@dataclass
class Samba:
    host: str
    port: int
    share: str
    user: str
    password: str
    root: Path  # the share's folder on this machine
    pid: int  # the main smbd: it forks a child per client connection

    def url(self, path: str) -> str:
        return f"smb://{self.user}@{self.host}:{self.port}/{self.share}/{path}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _smbd_missing() -> str | None:
    if os.geteuid() != 0:
        return "smbd needs root here"
    for tool in ("smbd", "smbpasswd", "useradd"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"{tool} is not installed (.ci/run installs samba)"
    return None


@pytest.fixture(scope="session")
def samba() -> Iterator[Samba]:
    reason = _smbd_missing()
    if reason:
        pytest.skip(reason)
    try:
        pwd.getpwnam(SMB_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SMB_USER],
            check=True,
        )
    base = Path(tempfile.mkdtemp(prefix="p2pclone-smb-"))
    os.chmod(base, 0o755)
    dirs = {name: base / name for name in ("private", "lock", "state", "cache", "pid", "ncalrpc")}
    for d in dirs.values():
        d.mkdir()
    share = base / "share"
    share.mkdir()
    shutil.chown(share, SMB_USER)
    port = _free_port()
    conf = base / "smb.conf"
    conf.write_text(
        f"""[global]
  server role = standalone server
  smb ports = {port}
  interfaces = 127.0.0.1
  bind interfaces only = yes
  disable netbios = yes
  private dir = {dirs["private"]}
  lock directory = {dirs["lock"]}
  state directory = {dirs["state"]}
  cache directory = {dirs["cache"]}
  pid directory = {dirs["pid"]}
  ncalrpc dir = {dirs["ncalrpc"]}
  log file = {base}/log.%m
  passdb backend = tdbsam:{dirs["private"]}/passdb.tdb
  map to guest = never
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes
[images]
  path = {share}
  read only = no
  valid users = {SMB_USER}
"""
    )
    subprocess.run(
        ["smbpasswd", "-c", str(conf), "-s", "-a", SMB_USER],
        input=f"{SMB_PASSWORD}\n{SMB_PASSWORD}\n",
        text=True,
        check=True,
        capture_output=True,
    )
    # Its own session: smbd signals its whole process group when it stops.
    proc = subprocess.Popen(
        ["smbd", "--foreground", "--no-process-group", "-s", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    logs = "".join(p.read_text() for p in base.glob("log.*"))
                    pytest.fail(f"smbd did not start: {logs[-2000:]}")
                time.sleep(0.1)
        yield Samba("127.0.0.1", port, "images", SMB_USER, SMB_PASSWORD, share, proc.pid)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def smb_env(samba: Samba, monkeypatch: pytest.MonkeyPatch) -> Samba:
    """The Samba server, with its password where p2pclone looks for it."""
    monkeypatch.setenv("P2PCLONE_SMB_PASSWORD", samba.password)
    return samba
