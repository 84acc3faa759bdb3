"""The command line as a user runs it: real processes, exit codes, JSON lines, sentences."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import MiB, random_file, write_layout

CLI = [sys.executable, "-m", "p2pclone"]


def run(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kw,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_receiver(*args: str) -> tuple[subprocess.Popen[str], dict]:
    rx = subprocess.Popen(
        [*CLI, "receive", *args, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert rx.stdout is not None
    first = json.loads(rx.stdout.readline())
    return rx, first


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_clone_with_json_output_on_both_sides(tmp_path: Path) -> None:
    source = tmp_path / "s.img"
    data = write_layout(source, 10 * MiB + 4321)
    target = tmp_path / "t.img"
    rx, first = start_receiver(str(target), "tcp://127.0.0.1:0", "--code", "4-cli-test", "--verify")
    assert first["event"] == "listening" and first["code"] == "4-cli-test"
    tx = run("send", str(source), first["url"], "--code", "4-cli-test", "--json")
    rx_out, rx_err = rx.communicate(timeout=60)
    assert tx.returncode == 0, tx.stderr
    assert rx.returncode == 0, rx_err
    tx_done, rx_done = json_lines(tx.stdout)[-1], json_lines(rx_out)[-1]
    for done in (tx_done, rx_done):
        assert done["event"] == "done"
        assert set(done) >= {
            "source_bytes",
            "wire_bytes",
            "chunks",
            "zero_chunks",
            "digest",
            "seconds",
        }
        assert done["source_bytes"] == len(data) and done["chunks"] == 11
    assert tx_done["digest"] == rx_done["digest"] and tx_done["wire_bytes"] == rx_done["wire_bytes"]
    assert target.read_bytes() == data


def test_receiver_generates_and_prints_a_code(tmp_path: Path) -> None:
    rx, first = start_receiver(str(tmp_path / "t.img"), f"tcp://127.0.0.1:{free_port()}")
    rx.kill()
    rx.communicate()
    number, w1, w2 = first["code"].split("-")
    assert 1 <= int(number) <= 99 and w1.isalpha() and w2.isalpha()


@pytest.mark.parametrize(
    ("args", "code", "sentence"),
    [
        (["send", "{src}", "ftp://host"], 2, "unknown transport ftp://"),
        (["send", "{src}", "tcp://:7411"], 2, "names no host"),
        (["send", "{src}", "host:7411"], 2, "not a transport URL"),
        (["send", "{tmp}/missing.img", "tcp://127.0.0.1:1"], 1, "does not exist: check the path"),
        (["send", "{src}", "tcp://127.0.0.1:{port}", "--wait", "0"], 5, "nobody is listening"),
        (
            ["receive", "{tmp}/no/such/dir/t.img", "tcp://127.0.0.1:0"],
            1,
            "does not exist: create it",
        ),
        (["receive", "{tmp}", "tcp://127.0.0.1:0"], 1, "is a folder"),
        (["send", "{src}", "tcp://127.0.0.1:1", "--chunk-size", "1000"], 2, "multiple of 4 KiB"),
        (["frobnicate"], 2, "invalid choice"),
    ],
)
def test_bad_input_gets_one_sentence_and_the_documented_exit_code(tmp_path, args, code, sentence):
    src = tmp_path / "s.img"
    random_file(src, 8192)
    argv = [a.format(src=src, tmp=tmp_path, port=free_port()) for a in args]
    r = run(*argv, "--json", "--code", "1-a-b") if argv[0] in ("send", "receive") else run(*argv)
    assert r.returncode == code, (r.stdout, r.stderr)
    assert sentence in r.stderr
    assert "Traceback" not in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.startswith("p2pclone: error:")]) == 1
    if argv[0] in ("send", "receive") and code != 2:
        assert json_lines(r.stdout)[-1]["event"] == "error"


@pytest.mark.parametrize(
    ("command", "url", "fix"),
    [
        ("send", "tcp://::1:23010", "tcp://[::1]:23010"),
        ("receive", "tcp://fe80::1:7411", "tcp://[fe80::1]:7411"),
    ],
)
def test_ipv6_address_without_brackets_is_a_usage_error(tmp_path, command, url, fix):
    """Issue 12: `send SRC tcp://::1:23010` said "Port could not be cast to integer value
    as ':1:23010'".  Now exit 2 with the bracket form.  Fails on the code before the fix
    (run once: the old sentence)."""
    src = tmp_path / "s.img"
    random_file(src, 8192)
    disk = str(src) if command == "send" else str(tmp_path / "t.img")
    r = run(command, disk, url, "--code", "1-a-b")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert f"write IPv6 addresses in brackets: {fix}" in r.stderr
    assert "Traceback" not in r.stderr and "could not be cast" not in r.stderr


_BLOCK = "/dev/loop0"  # a block device on most Linux machines; only read (restore side)


@pytest.mark.parametrize(
    ("command", "image", "kind"),
    [
        ("send", "/dev/null", "is a character device"),
        ("receive", "/dev/null", "is a character device"),
        ("send", "{tmp}", "is a folder"),
        ("receive", "{tmp}", "is a folder"),
        pytest.param(
            "receive",
            _BLOCK,
            "is a block device",
            marks=pytest.mark.skipif(not Path(_BLOCK).is_block_device(), reason=f"no {_BLOCK}"),
        ),
    ],
)
def test_a_device_or_folder_as_image_url_is_a_usage_error(tmp_path, command, image, kind):
    """Issue 12: `send SRC file:///dev/…` failed with "(Invalid argument): check the
    share" (and would have written an image onto a block device).  Now exit 2: a device
    is given as SOURCE or TARGET, not as a file:// URL.  Fails on the code before the fix
    (run once: a save said "(Invalid argument)" or "(Is a directory)", exit 5; a restore
    said "is not a p2pclone image").  The block device is only used on the restore
    side, which only reads it."""
    src = tmp_path / "s.img"
    random_file(src, 8192)
    url = "file://" + image.format(tmp=tmp_path)
    disk = str(src) if command == "send" else str(tmp_path / "t.img")
    r = run(command, disk, url, "--passphrase", "1-a-b")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert f"{url} {kind}, not an image file" in r.stderr
    assert "Traceback" not in r.stderr
    if command == "receive":
        assert not (tmp_path / "t.img").exists()


def test_a_sender_started_before_its_receiver_waits_for_it(tmp_path: Path) -> None:
    """Issue 12: a sender started before the receiver failed at once ("nobody is
    listening").  Now it keeps trying (--wait, default 60 s), says so once, and the clone
    succeeds.  Fails on the code before the fix (run once: the sender exited 5 at once)."""
    source = tmp_path / "s.img"
    data = write_layout(source, 3 * MiB)
    target = tmp_path / "t.img"
    url = f"tcp://127.0.0.1:{free_port()}"
    tx = subprocess.Popen(
        [*CLI, "send", str(source), url, "--code", "5-late-start", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    time.sleep(1.5)  # the sender is up and refused by now; its receiver comes late
    rx = subprocess.Popen(
        [*CLI, "receive", str(target), url, "--code", "5-late-start", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        tx_out, tx_err = tx.communicate(timeout=60)
        assert tx.returncode == 0, tx_err
        _, rx_err = rx.communicate(timeout=60)
        assert rx.returncode == 0, rx_err
    finally:
        rx.kill()
        rx.communicate()
    notices = [e for e in json_lines(tx_out) if e["event"] == "notice"]
    assert [n["message"] for n in notices] == [
        f"nobody is listening at {url} yet (Connection refused); waiting up to 60 s for "
        "the receiver to start (--wait)"
    ]
    assert target.read_bytes() == data


def test_a_sender_gives_up_after_its_wait(tmp_path: Path) -> None:
    """`--wait 1` to a port nobody listens on: exit 5 after about a second, with the
    sentence and the wait.  Fails on the code before the fix (run once: it gave up at
    once, without "after trying for 1 s")."""
    src = tmp_path / "s.img"
    random_file(src, 8192)
    url = f"tcp://127.0.0.1:{free_port()}"
    start = time.monotonic()
    r = run("send", str(src), url, "--code", "1-a-b", "--wait", "1")
    elapsed = time.monotonic() - start
    assert r.returncode == 5, (r.stdout, r.stderr)
    assert 1 <= elapsed < 10
    assert (
        f"p2pclone: error: nobody is listening at {url} (Connection refused) after trying "
        "for 1 s: start `p2pclone receive` on the target machine first" in r.stderr
    )
    assert (r.stdout + r.stderr).count("p2pclone: note: nobody is listening") == 1


def test_existing_target_without_yes_and_without_terminal_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "s.img"
    write_layout(source, 3 * MiB)
    target = tmp_path / "t.img"
    junk = random_file(target, 4 * MiB)
    port = free_port()
    rx = subprocess.Popen(
        [*CLI, "receive", str(target), f"tcp://127.0.0.1:{port}", "--code", "x"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert rx.stdout is not None
    rx.stdout.readline()  # listening
    tx = run("send", str(source), f"tcp://127.0.0.1:{port}", "--code", "x")
    _, rx_err = rx.communicate(timeout=30)
    assert rx.returncode == 4 and tx.returncode == 4
    assert "pass --yes to confirm; nothing was written" in rx_err
    assert "pass --yes to confirm" in tx.stderr
    assert target.read_bytes() == junk


def test_disks_lists_block_devices_as_json() -> None:
    r = run("disks", "--json")
    assert r.returncode == 0, r.stderr
    rows = json_lines(r.stdout)
    for row in rows:
        assert {"path", "size", "model", "serial", "mounted"} <= set(row)
    if os.path.exists("/sys/block") and any(Path("/sys/block").iterdir()):
        assert rows, "sysfs lists block devices but `disks` found none"
    text = run("disks")
    assert text.returncode == 0 and "DEVICE" in text.stdout


def test_help_names_every_command_and_exit_code() -> None:
    r = run("--help")
    assert r.returncode == 0
    for word in ("receive", "send", "clone", "disks", "demo", "5 link lost"):
        assert word in r.stdout


@pytest.mark.slow
def test_demo_runs_and_says_what_it_did(tmp_path: Path) -> None:
    r = run("demo", "--size", "32", "--dir", str(tmp_path / "demo"), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "uses, byte for byte" in r.stdout and "MB/s" in r.stdout
    assert "were neither sent nor written" in r.stdout and " 0 MiB it does not use" not in r.stdout


def test_the_done_line_counts_repaired_chunks(capsys: pytest.CaptureFixture[str]) -> None:
    """The human Done line names the chunks --verify fetched again (it did not)."""
    from p2pclone.cli import Output
    from p2pclone.session import Done

    out = Output(json_mode=False, role="receive")
    out(Done(source_bytes=MiB, wire_bytes=MiB, chunks=1, zero_chunks=0, digest="ab" * 32,
             seconds=1.0, verified=True, repaired_chunks=2))  # fmt: skip
    assert "2 repaired" in capsys.readouterr().out


def test_the_multicast_done_line_names_every_receiver(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 24 §5: a group sender's last lines say "3 of 3 receivers done" by name."""
    from p2pclone.cli import Output
    from p2pclone.session import Done

    out = Output(json_mode=False, role="send")
    names = ["pc1 (10.0.0.2)", "pc2 (10.0.0.3)", "pc3 ([fd00::4])"]
    out(Done(source_bytes=MiB, wire_bytes=MiB, chunks=1, zero_chunks=0, digest="ab" * 32,
             seconds=1.0, receivers=names))  # fmt: skip
    assert "3 of 3 receivers done: pc1 (10.0.0.2), pc2 (10.0.0.3) and pc3 ([fd00::4])" in (
        capsys.readouterr().out
    )


def test_log_writes_the_whole_run_beside_the_terminal(tmp_path: Path) -> None:
    """Issue 24 §5, --log FILE: a clone shown as text on the terminal writes its every
    event, as --json would print them and stamped with the time, to the file; a second
    run appends its own (here an error, with its exit code); a log that cannot be
    written is a usage error before anything is done."""
    source, target, log = tmp_path / "s.img", tmp_path / "t.img", tmp_path / "run.log"
    data = write_layout(source, 6 * MiB)
    ok = run("clone", str(source), str(target), "--yes", "--log", str(log))
    assert ok.returncode == 0, ok.stderr
    assert "Done:" in ok.stdout and not ok.stdout.lstrip().startswith("{")  # text on screen
    assert target.read_bytes() == data
    first = json_lines(log.read_text())
    assert [e["event"] for e in first][0] == "run" and first[-1]["event"] == "done"
    assert {"map", "plan", "progress"} <= {e["event"] for e in first}
    assert all(e["time"].startswith("20") for e in first)
    assert first[-1]["digest"] and first[-1]["source_bytes"] == len(data)

    bad = run("clone", str(tmp_path / "missing.img"), str(target), "--yes", "--log", str(log))
    assert bad.returncode != 0
    second = json_lines(log.read_text())[len(first) :]
    assert second[0]["event"] == "run" and second[-1]["event"] == "error"
    assert second[-1]["exit"] == bad.returncode and "missing.img" in second[-1]["message"]

    nowhere = run("clone", str(source), str(target), "--yes", "--log", "/nonexistent/x.log")
    assert nowhere.returncode == 2 and "cannot write the log /nonexistent/x.log" in nowhere.stderr
    assert target.read_bytes() == data


@pytest.mark.parametrize("command", ["clone-from", "clone-onto", "receive"])
def test_a_mistyped_disk_points_to_p2pclone_disks(tmp_path: Path, command: str) -> None:
    """Issue 24 §7: /dev/sdz (no such disk) as SOURCE or TARGET: one sentence naming it
    and `p2pclone disks`; never a file made in /dev (before, `clone s.img /dev/sdz`
    wrote the clone into a new regular file /dev/sdz, in RAM).  Negative control
    (tried): without the /dev check in Target.open, /dev/sdz was created."""
    if os.geteuid() != 0:
        pytest.skip("creating a file in /dev needs root: the check is what stops it")
    missing = "/dev/p2pclone-no-such-disk"
    source = tmp_path / "s.img"
    write_layout(source, MiB)
    argv = {
        "clone-from": ["clone", missing, str(tmp_path / "t.img"), "--yes"],
        "clone-onto": ["clone", str(source), missing, "--yes"],
        "receive": ["receive", missing, "tcp://127.0.0.1:0", "--code", "5-a-b", "--yes"],
    }[command]
    done = run(*argv)
    assert done.returncode == 1, done.stderr
    assert f"{missing} does not exist: this machine has no such disk" in done.stderr
    assert "`p2pclone disks` lists its disks" in done.stderr
    assert not os.path.exists(missing)


def test_disks_shows_partitions_filesystems_and_labels(tmp_path: Path, loop_device) -> None:
    """Issue 24 §7: `p2pclone disks` lists each disk's partitions with size, filesystem
    and labels (read by blkid -p from the device), as text and as JSON."""
    table = tmp_path / "table.img"
    table.write_bytes(bytes(64 * MiB))
    subprocess.run(["sgdisk", "-n1:2048:+20M", "-t1:ef00", "-c1:EFI system", "-n2:0:0",
                    "-c2:root", str(table)], check=True, capture_output=True)  # fmt: skip
    dev = loop_device(64 * MiB, table.read_bytes())
    subprocess.run(["partx", "-a", dev], check=True, capture_output=True)
    try:
        subprocess.run(["mkfs.ext4", "-q", "-L", "lab-root", f"{dev}p2"], check=True)
        text = run("disks")
        assert text.returncode == 0, text.stderr
        line = next(x for x in text.stdout.splitlines() if f"{dev}p2" in x)
        assert "ext4" in line and "label 'lab-root'" in line and "partlabel 'root'" in line
        mine = next(d for d in json_lines(run("disks", "--json").stdout) if d["path"] == dev)
        assert mine["table"] == "gpt"
        vols = {v["path"]: v for v in mine["volumes"]}
        assert vols[f"{dev}p2"]["fs"] == "ext4" and vols[f"{dev}p2"]["label"] == "lab-root"
        assert vols[f"{dev}p1"]["partlabel"] == "EFI system"
    finally:
        subprocess.run(["partx", "-d", dev], capture_output=True)
