"""What users install: the wheel, in a fresh environment, run from outside the checkout.

An editable install (what ``./dev`` uses) finds every module through the source tree, so
a package missing from the wheel goes unnoticed there.  This test builds the wheel,
installs it (not editable) into a new virtual environment and runs a clone over TCP, an
image save and restore, and (as root, in network namespaces) a multicast clone to two
receivers with the installed ``p2pclone`` command, from a folder where the checkout is
not importable.

Negative control: with the hand-kept ``packages`` list pyproject.toml had (no
``p2pclone.image``, no ``p2pclone.multicast``), ``send`` fails with
ModuleNotFoundError and this test fails.  With ``p2pclone.multicast*`` excluded from the
wheel, the TCP and image test still passes (the drivers import no multicast module) and
the multicast one fails: the installed receiver stops with ModuleNotFoundError.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import MiB, write_layout
from tests.multicast.conftest import Lan
from tests.multicast.conftest import lan as lan  # the fixture: a LAN of network namespaces

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``p2pclone`` command of a fresh venv holding only the built wheel and its deps."""
    work = tmp_path_factory.mktemp("wheel")
    # Build from a copy without build/ and *.egg-info: setuptools reuses what an earlier
    # build left in build/lib, which would hide a package missing from the list.
    tree = work / "src"
    shutil.copytree(
        ROOT,
        tree,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
        ),
    )
    dist = work / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), str(tree)],
        check=True,
        capture_output=True,
        cwd=work,
    )
    wheels = list(dist.glob("p2pclone-*.whl"))
    assert len(wheels) == 1, wheels
    env_dir = work / "venv"
    venv.create(env_dir, with_pip=True)
    pip = subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheels[0])],
        capture_output=True,
        text=True,
        cwd=work,
    )
    assert pip.returncode == 0, pip.stderr
    return env_dir / "bin" / "p2pclone"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "P2PCLONE_CODE")}
    return env


def test_the_installed_wheel_clones_and_saves_images(installed: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    source = outside / "disk.img"
    data = write_layout(source, 6 * MiB + 777)
    state = str(outside / "state")
    env = _env()

    # The installed package, not the checkout, is what runs.
    where = subprocess.run(
        [
            str(installed.parent / "python"),
            "-c",
            "import p2pclone, p2pclone.transports; "
            "print(p2pclone.__file__); print(p2pclone.transports.__file__)",
        ],
        capture_output=True,
        text=True,
        cwd=outside,
        env=env,
        check=True,
    ).stdout
    assert str(ROOT) not in where, where
    # transports/ ships inside p2pclone: no generic top-level name is claimed.
    claimed = subprocess.run(
        [
            str(installed.parent / "python"),
            "-c",
            "import importlib.util; print(importlib.util.find_spec('transports'))",
        ],
        capture_output=True,
        text=True,
        cwd=outside,
        env=env,
        check=True,
    ).stdout
    assert claimed.strip() == "None", claimed

    # A clone over loopback TCP.
    target = outside / "copy.img"
    rx = subprocess.Popen(
        [
            str(installed),
            "receive",
            str(target),
            "tcp://127.0.0.1:0",
            "--code",
            "9-wheel-test",
            "--json",
            "--yes",
            "--state-dir",
            state,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=outside,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert rx.stdout is not None
    url = json.loads(rx.stdout.readline())["url"]
    tx = subprocess.run(
        [str(installed), "send", str(source), url, "--code", "9-wheel-test"],
        capture_output=True,
        text=True,
        cwd=outside,
        env=env,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    _, rx_err = rx.communicate(timeout=120)
    assert tx.returncode == 0, tx.stderr
    assert rx.returncode == 0, rx_err
    assert target.read_bytes() == data

    # An image round trip on a folder share.
    image = f"file://{outside}/images/disk.p2pc"
    secret = "a long wheel passphrase"
    save = subprocess.run(
        [str(installed), "send", str(source), image, "--passphrase", secret],
        capture_output=True,
        text=True,
        cwd=outside,
        env=env,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert save.returncode == 0, save.stderr
    restored = outside / "restored.img"
    restore = subprocess.run(
        [
            str(installed),
            "receive",
            str(restored),
            image,
            "--passphrase",
            secret,
            "--yes",
            "--state-dir",
            state,
        ],
        capture_output=True,
        text=True,
        cwd=outside,
        env=env,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert restore.returncode == 0, restore.stderr
    assert restored.read_bytes() == data


@pytest.mark.root
def test_the_installed_wheel_joins_a_multicast_group(
    installed: Path, lan: Callable[[int], Lan], tmp_path: Path
) -> None:
    """One installed sender, two installed receivers in their own network namespaces
    (tests/multicast/conftest.py), the code in P2PCLONE_CODE as a script would set it.
    Both targets end byte-identical, and the sender saw both finish as group members
    (neither was evicted to a unicast session)."""
    net = lan(3)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    source = outside / "disk.img"
    data = write_layout(source, 4 * MiB + 777)
    url = "multicast://239.77.2.1:17600?iface=eth0"
    env = {**_env(), "P2PCLONE_CODE": "5-wheel-group"}
    targets = [outside / f"t{k}.img" for k in (1, 2)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for k, target in zip((1, 2), targets, strict=True):
            rx = net.run(
                k, str(installed), "receive", str(target), url, "--yes", "--json",
                "--state-dir", str(outside / f"state{k}"),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                cwd=outside, env=env,
            )  # fmt: skip
            procs.append(rx)
            assert rx.stdout is not None and rx.stderr is not None
            first = rx.stdout.readline()
            if not first:
                pytest.fail(f"receiver {k} did not start: {rx.stderr.read().decode()}")
            assert json.loads(first)["event"] == "listening", first
        tx = net.run(
            0, str(installed), "send", str(source), url, "--receivers", "2", "--wait", "30",
            "--json", stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            cwd=outside, env=env,
        )  # fmt: skip
        procs.append(tx)
        out, err = tx.communicate(timeout=120)
        assert tx.returncode == 0, err.decode()
        for rx in procs[:2]:
            _, rx_err = rx.communicate(timeout=60)
            assert rx.returncode == 0, rx_err.decode()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for target in targets:
        assert target.read_bytes() == data
    states: dict[str, list[str]] = {}
    for line in out.splitlines():
        event = json.loads(line)
        if event.get("event") == "receiver":
            states.setdefault(event["name"], []).append(event["state"])
    assert len(states) == 2, states
    for seen in states.values():
        assert seen[-1] == "done" and "unicast" not in seen and "evicted" not in seen, states
