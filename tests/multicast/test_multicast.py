"""Multicast clones between real processes in network namespaces (tests/multicast/conftest.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import MiB, random_file, write_layout
from tests.multicast.conftest import Lan, sh

CODE = "7-acoustic-garden-rocket"  # three words of the list: a group's full guess budget


def receiver(net: Lan, k: int, target: Path, url: str, state: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, P2PCLONE_STATE_DIR=str(state / f"r{k}"))
    proc = net.run(
        k, sys.executable, "-m", "p2pclone", "receive", str(target), url, "--code", CODE,
        "--yes", "--json", stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline())["event"] == "listening"
    return proc


def sender(net: Lan, source: Path, url: str, n: int) -> subprocess.Popen[bytes]:
    return net.run(
        0, sys.executable, "-m", "p2pclone", "send", str(source), url, "--code", CODE,
        "--receivers", str(n), "--wait", "30", "--json",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def events(out: bytes) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_three_receivers_get_one_multicast_copy(lan, tmp_path: Path) -> None:
    net: Lan = lan(4)
    source = tmp_path / "disk.img"
    data = write_layout(source, 24 * MiB + 4096)
    url = "multicast://239.77.1.1:17500?iface=eth0"
    targets = [tmp_path / f"t{k}.img" for k in (1, 2, 3)]
    rx = [receiver(net, k, t, url, tmp_path) for k, t in zip((1, 2, 3), targets, strict=True)]
    tx = sender(net, source, url, 3)
    out, err = tx.communicate(timeout=120)
    assert tx.returncode == 0, err.decode()
    done = events(out)[-1]
    for r in rx:
        r_out, r_err = r.communicate(timeout=60)
        assert r.returncode == 0, r_err.decode()
        assert events(r_out)[-1]["event"] == "done"
        # Its own count of what reached it includes the group's datagrams.
        assert events(r_out)[-1]["wire_bytes"] > 0.9 * done["wire_bytes"]
    for t in targets:
        assert t.read_bytes() == data
    # One copy on the wire for all three: the multicast bytes are about the data once.
    assert done["wire_bytes"] < 1.2 * (len(data) - done["zero_chunks"] * MiB)
    # The closing line's receivers, as the lab names them (issue 24 §5).
    assert done["receivers"] == [net.member(k) for k in (1, 2, 3)]


def test_the_senders_delta_makes_the_group_send_only_what_changed(lan, tmp_path: Path) -> None:
    """Issue 23: three receivers hold an older copy (1% of the chunks changed since);
    `--delta` given on the sender: the group sends at most 5% of the disk, as when the
    receivers ask for it.  Before, the multicast driver dropped the sender's --delta
    without a word (negative control, tried: with the group's PLAN not asking for it,
    no member hashed its target — 0 chunks already there — and all of it was sent)."""
    net: Lan = lan(4)
    source = tmp_path / "disk.img"
    data = bytearray(random_file(source, 100 * MiB, seed=5))
    old = bytearray(data)
    for k in range(0, 100, 100):  # one chunk in a hundred changed since the copy
        old[k * MiB : k * MiB + 4096] = bytes(4096)
    url = "multicast://239.77.1.41:17541?iface=eth0"
    targets = [tmp_path / f"t{k}.img" for k in (1, 2, 3)]
    for t in targets:
        t.write_bytes(old)
    rx = [receiver(net, k, t, url, tmp_path) for k, t in zip((1, 2, 3), targets, strict=True)]
    tx = net.run(
        0, sys.executable, "-m", "p2pclone", "send", str(source), url, "--code", CODE,
        "--receivers", "3", "--wait", "30", "--delta", "--json",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = tx.communicate(timeout=120)
    assert tx.returncode == 0, err.decode()
    for r in rx:
        r_out, r_err = r.communicate(timeout=60)
        assert r.returncode == 0, r_err.decode()
        assert events(r_out)[-1]["same_chunks"] >= 98
    for t in targets:
        assert t.read_bytes() == data
    sent = events(out)[-1]["wire_bytes"]
    assert sent <= 0.05 * len(data), sent / len(data)


def test_loss_a_killed_receiver_and_a_slow_one_all_end_byte_identical(lan, tmp_path: Path) -> None:
    net: Lan = lan(5)
    source = tmp_path / "disk.img"
    data = random_file(source, 16 * MiB)
    url = "multicast://239.77.1.2:17501?iface=eth0&rate=40m"  # 5 MB/s: a few seconds
    net.loss(2, 3)  # 3 % of the frames towards host 2 are dropped
    net.rate(4, "4mbit")  # host 4 gets a tenth of the group's rate
    targets = {k: tmp_path / f"t{k}.img" for k in (1, 2, 3, 4)}
    rx = {k: receiver(net, k, targets[k], url, tmp_path) for k in targets}
    tx = sender(net, source, url, 4)
    # Host 3 dies mid-way (its target partly written), and is started again.
    deadline = time.monotonic() + 60
    while not (targets[3].exists() and targets[3].stat().st_blocks * 512 > 4 * MiB):
        assert time.monotonic() < deadline and tx.poll() is None
        time.sleep(0.02)
    rx[3].send_signal(signal.SIGKILL)
    rx[3].wait()
    rx[3] = receiver(net, 3, targets[3], url, tmp_path)
    out, err = tx.communicate(timeout=300)
    assert tx.returncode == 0, err.decode()
    for k, r in rx.items():
        r_out, r_err = r.communicate(timeout=120)
        assert r.returncode == 0, (k, r_err.decode())
    for k, t in targets.items():
        assert t.read_bytes() == data, k
    # Members are named as the lab knows them: host name and address (issue 24 §5).
    states = {(e["name"], e["state"]) for e in events(out) if e["event"] == "receiver"}
    assert (net.member(4), "evicted") in states  # the slow one left the group...
    assert (net.member(4), "unicast") in states  # ...and finished by unicast
    assert (net.member(3), "unicast") in states  # the restarted one resumed by unicast
    assert (net.member(2), "evicted") not in states  # 3 % loss is repaired in the group
    # Each receiver's own progress: how far it is, at what rate; then done.
    seen = [e for e in events(out) if e["event"] == "receiver"]
    mine = [e for e in seen if e["name"] == net.member(1)]
    assert any(
        e["state"] == "receiving" and 0 < e["done_bytes"] < e["total_bytes"] and e["rate"] > 0
        for e in mine
    )
    assert mine[-1]["state"] == "done" and mine[-1]["done_bytes"] == len(data)
    slow = [e for e in seen if e["name"] == net.member(4)]
    assert any(e["state"] == "unicast" and e["done_bytes"] > 0 for e in slow)


# A sender whose group data is forged, as a rogue group member could forge it: the
# fragments are sealed with the real group key, but chunk 2 holds other bytes, chunk 5
# is left out and chunk 7 claims a length other than the plan's (4 KiB short).  The
# control connections still carry the true plan and hashes.
FORGER = """
import dataclasses
import sys
from p2pclone.cli import main
from p2pclone.multicast import slices
from p2pclone.protocol import Encoding

real = slices.pack_entry

def forged(chunk):
    if chunk.index == 2:
        other = b"\\x55" * chunk.length
        chunk = dataclasses.replace(chunk, body=other, encoding=Encoding.RAW)
    if chunk.index == 5:
        return b""
    if chunk.index == 7:
        short = chunk.length - 4096
        chunk = dataclasses.replace(
            chunk, length=short, body=b"\\x55" * short, encoding=Encoding.RAW
        )
    return real(chunk)

slices.pack_entry = forged
sys.exit(main(sys.argv[1:]))
"""


def test_group_data_forged_with_the_group_key_is_refetched_not_written(lan, tmp_path: Path) -> None:
    """Every forged chunk is fetched again over the receiver's own link and the targets
    end byte-identical.  Catches: a chunk failing its hash being written or fatal, and
    (negative control, tried) a group entry whose length is not the plan's being dropped
    without a re-fetch -- then ``repaired_chunks`` is 2 and chunk 7 is never written."""
    net: Lan = lan(3)
    source = tmp_path / "disk.img"
    data = random_file(source, 12 * MiB)
    url = "multicast://239.77.1.3:17502?iface=eth0"
    targets = [tmp_path / f"t{k}.img" for k in (1, 2)]
    rx = [receiver(net, k, t, url, tmp_path) for k, t in zip((1, 2), targets, strict=True)]
    tx = net.run(
        0, sys.executable, "-c", FORGER, "send", str(source), url, "--code", CODE,
        "--receivers", "2", "--wait", "30", "--json",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = tx.communicate(timeout=120)
    assert tx.returncode == 0, err.decode()
    for r in rx:
        r_out, r_err = r.communicate(timeout=60)
        assert r.returncode == 0, r_err.decode()
        done = events(r_out)[-1]
        assert done["event"] == "done"
        assert done["repaired_chunks"] == 3  # the three forged chunks, fetched over its own link
    for t in targets:
        assert t.read_bytes() == data


def test_a_pulled_cable_ends_that_receiver_and_the_sender_names_it(lan, tmp_path: Path) -> None:
    net: Lan = lan(3)
    source = tmp_path / "disk.img"
    data = random_file(source, 16 * MiB)
    url = "multicast://239.77.1.4:17503?iface=eth0&rate=16m"  # 2 MB/s: about 8 s
    targets = {k: tmp_path / f"t{k}.img" for k in (1, 2)}
    rx = {k: receiver(net, k, targets[k], url, tmp_path) for k in targets}
    tx = net.run(
        0, sys.executable, "-m", "p2pclone", "send", str(source), url, "--code", CODE,
        "--receivers", "2", "--wait", "5", "--json",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (targets[2].exists() and targets[2].stat().st_blocks * 512 > 2 * MiB):
        assert time.monotonic() < deadline and tx.poll() is None
        time.sleep(0.02)
    net.unplug(2)
    pulled = time.monotonic()
    _, err2 = rx[2].communicate(timeout=150)
    # Host 2 hears nothing more: its control link's keepalive ends it, not a hang.
    assert rx[2].returncode == 5, err2.decode()
    assert time.monotonic() - pulled < 100
    assert "resume" in err2.decode()
    _, err1 = rx[1].communicate(timeout=60)
    assert rx[1].returncode == 0, err1.decode()
    assert targets[1].read_bytes() == data  # the other one finished, unharmed
    out, err = tx.communicate(timeout=150)
    # The sender does not claim success: it names the receiver that did not finish.
    assert tx.returncode == 5, err.decode()
    assert "1 of 2 receivers did not finish" in err.decode()
    assert net.addr(2) in err.decode()


def test_a_refused_receiver_makes_the_sender_fail_with_its_exit_code(lan, tmp_path: Path) -> None:
    net: Lan = lan(3)
    source = tmp_path / "disk.img"
    data = random_file(source, 4 * MiB)
    url = "multicast://239.77.1.5:17504?iface=eth0"
    good = receiver(net, 1, tmp_path / "t1.img", url, tmp_path)
    env = dict(os.environ, P2PCLONE_STATE_DIR=str(tmp_path / "r2"))
    wrong = net.run(
        2, sys.executable, "-m", "p2pclone", "receive", str(tmp_path / "t2.img"), url,
        "--code", "9-wrong-code", "--yes", stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    tx = net.run(
        0, sys.executable, "-m", "p2pclone", "send", str(source), url, "--code", CODE,
        "--receivers", "2", "--wait", "3", "--json",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = tx.communicate(timeout=120)
    assert good.wait(60) == 0 and (tmp_path / "t1.img").read_bytes() == data
    assert wrong.wait(60) == 3
    # The lab is not all cloned: the sender says so, with the refused one's exit code.
    assert tx.returncode == 3, err.decode()
    last = events(out)[-1]
    assert last["event"] == "error" and last["code"] == "group"
    assert "1 of 2 receivers did not finish" in last["message"]
    assert net.addr(2) in last["message"] and "pairing failed" in last["message"]


def test_ctrl_c_on_the_sender_is_exit_5_not_a_traceback(lan, tmp_path: Path) -> None:
    net: Lan = lan(2)
    source = tmp_path / "disk.img"
    random_file(source, 16 * MiB)
    url = "multicast://239.77.1.6:17505?iface=eth0&rate=16m"  # 2 MB/s: about 8 s
    target = tmp_path / "t1.img"
    rx = receiver(net, 1, target, url, tmp_path)
    tx = sender(net, source, url, 1)
    deadline = time.monotonic() + 60
    while not (target.exists() and target.stat().st_blocks * 512 > 2 * MiB):
        assert time.monotonic() < deadline and tx.poll() is None
        time.sleep(0.02)
    tx.send_signal(signal.SIGINT)  # Ctrl-C (`ip netns exec` became the sender)
    out, err = tx.communicate(timeout=60)
    assert tx.returncode == 5, err.decode()
    assert b"Traceback" not in err and b"interrupted" in err
    assert events(out)[-1] == {**events(out)[-1], "event": "error", "code": "interrupted"}
    assert rx.wait(60) == 5


def test_a_new_group_run_resumes_what_the_receivers_hold(lan, tmp_path: Path) -> None:
    net: Lan = lan(3)
    source = tmp_path / "disk.img"
    data = random_file(source, 16 * MiB)
    url = "multicast://239.77.1.7:17506?iface=eth0&rate=16m"  # 2 MB/s: about 8 s
    targets = {k: tmp_path / f"t{k}.img" for k in (1, 2)}
    rx = {k: receiver(net, k, targets[k], url, tmp_path) for k in targets}
    tx = sender(net, source, url, 2)
    deadline = time.monotonic() + 60
    while not all(t.exists() and t.stat().st_blocks * 512 > 6 * MiB for t in targets.values()):
        assert time.monotonic() < deadline and tx.poll() is None
        time.sleep(0.02)
    tx.send_signal(signal.SIGKILL)  # the sender's machine goes down mid-way
    tx.wait()
    assert all(r.wait(60) == 5 for r in rx.values())
    # Everyone again: the receivers' journals say what they hold; only the rest is sent.
    rx = {k: receiver(net, k, targets[k], url, tmp_path) for k in targets}
    tx = sender(net, source, url, 2)
    out, err = tx.communicate(timeout=120)
    assert tx.returncode == 0, err.decode()
    for k, r in rx.items():
        r_out, r_err = r.communicate(timeout=60)
        assert r.returncode == 0, r_err.decode()
        assert events(r_out)[-1]["same_chunks"] >= 4  # chunks it held were not sent again
        assert targets[k].read_bytes() == data
    assert events(out)[-1]["wire_bytes"] < 0.8 * len(data)


def test_a_long_zero_run_with_resumed_members_does_not_stall(lan, tmp_path: Path) -> None:
    """Thousands of zero chunks in a row fill no slice; members that report what they
    hold (here with --delta) send those reports only so far ahead of the data."""
    net: Lan = lan(2)
    source = tmp_path / "disk.img"
    with open(source, "wb") as f:
        f.truncate(320 * MiB)  # 5120 chunks of 64 KiB, nearly all holes
        f.seek(0)
        f.write(os.urandom(MiB))
        f.seek(300 * MiB)
        f.write(os.urandom(MiB))
    target = tmp_path / "t1.img"
    shutil.copyfile(source, target)
    with open(target, "r+b") as f:  # one block differs
        f.seek(300 * MiB + 4096)
        f.write(b"x" * 4096)
    url = "multicast://239.77.1.8:17507?iface=eth0"
    env = dict(os.environ, P2PCLONE_STATE_DIR=str(tmp_path / "r1"))
    rx = net.run(
        1, sys.executable, "-m", "p2pclone", "receive", str(target), url, "--code", CODE,
        "--yes", "--delta", "--json", stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert rx.stdout is not None and json.loads(rx.stdout.readline())["event"] == "listening"
    tx = net.run(
        0, sys.executable, "-m", "p2pclone", "send", str(source), url, "--code", CODE,
        "--receivers", "1", "--wait", "30", "--chunk-size", "64k", "--json",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = tx.communicate(timeout=120)
    assert tx.returncode == 0, err.decode()
    r_out, r_err = rx.communicate(timeout=60)
    assert rx.returncode == 0, r_err.decode()
    assert events(r_out)[-1]["same_chunks"] > 5000  # all but the changed one
    assert target.read_bytes() == source.read_bytes()


def test_a_latecomer_finishes_by_unicast_within_the_rate(lan, tmp_path: Path) -> None:
    net: Lan = lan(3)
    source = tmp_path / "disk.img"
    data = random_file(source, 12 * MiB)
    url = "multicast://239.77.1.9:17508?iface=eth0&rate=16m"  # 2 MB/s, the network's share
    first = receiver(net, 1, tmp_path / "t1.img", url, tmp_path)
    tx = sender(net, source, url, 1)
    deadline = time.monotonic() + 60
    # The first receiver sizes its target once the plan is accepted: the group started.
    # (The file itself exists from the start: a receiver opens its target before
    # listening.)
    while not (tmp_path / "t1.img").exists() or not (tmp_path / "t1.img").stat().st_size:
        assert time.monotonic() < deadline and tx.poll() is None
        time.sleep(0.02)
    late = receiver(net, 2, tmp_path / "t2.img", url, tmp_path)  # after the group started
    l_out, l_err = late.communicate(timeout=120)
    assert late.returncode == 0, l_err.decode()
    assert (tmp_path / "t2.img").read_bytes() == data
    # Its unicast session kept to rate= too: 12 MiB at 2 MB/s is over 6 s.
    assert events(l_out)[-1]["seconds"] > 4.0
    f_out, f_err = first.communicate(timeout=60)
    assert first.returncode == 0, f_err.decode()
    out, err = tx.communicate(timeout=60)
    assert tx.returncode == 0, err.decode()
    # The sender said why this one is served alone (issue 24 §5).
    late_lines = [e for e in events(out) if e.get("name") == net.member(2)]
    assert any(
        e["state"] == "unicast" and "after the group started" in e["why"] for e in late_lines
    ), late_lines


# A group member that answers every POLL with a one-byte bitmap, whatever the slice's
# size (as a bug or a forged receiver could).
SHORT_REPORTS = """
import sys
from p2pclone.cli import main
from p2pclone.multicast.plane import ReceivePlane

ReceivePlane.missing = lambda self, slice_no: b"\\x01"
sys.exit(main(sys.argv[1:]))
"""


def test_a_member_with_a_malformed_report_leaves_alone(lan, tmp_path: Path) -> None:
    """Catches one group member failing the whole group: a REPORT whose bitmap is
    shorter than the slice raised IndexError in the sender (a traceback, and every
    receiver failed).  Now that member's session ends with a sentence naming its
    REPORT, and the others finish."""
    net: Lan = lan(3)
    source = tmp_path / "disk.img"
    data = random_file(source, 8 * MiB)
    url = "multicast://239.77.1.10:17509?iface=eth0"
    good = receiver(net, 1, tmp_path / "t1.img", url, tmp_path)
    env = dict(os.environ, P2PCLONE_STATE_DIR=str(tmp_path / "r2"))
    rogue = net.run(
        2, sys.executable, "-c", SHORT_REPORTS, "receive", str(tmp_path / "t2.img"), url,
        "--code", CODE, "--yes", stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    tx = sender(net, source, url, 2)
    out, err = tx.communicate(timeout=120)
    g_out, g_err = good.communicate(timeout=60)
    assert good.returncode == 0, g_err.decode()
    assert (tmp_path / "t1.img").read_bytes() == data  # the honest one is unharmed
    _, r_err = rogue.communicate(timeout=60)
    assert rogue.returncode == 1, r_err.decode()
    assert b"REPORT" in r_err and b"Traceback" not in r_err
    assert b"Traceback" not in err, err.decode()
    assert tx.returncode == 1, err.decode()  # the lab is not all cloned: the sender says so
    last = events(out)[-1]
    assert "1 of 2 receivers did not finish" in last["message"]
    assert net.addr(2) in last["message"] and "REPORT" in last["message"]


GUESS = str(Path(__file__).with_name("guess_tool.py"))


def test_guesses_at_the_code_are_limited_per_address_and_per_run(lan, tmp_path: Path) -> None:
    """Catches unlimited guesses at a multicast sender: every connection to its control
    port was a pairing attempt and failures just returned, so one client could make
    hundreds of guesses (here 250) and then pair with the right code and get the PLAN.
    Now an address has 3 failed pairings, a run 2 x receivers + 4 (8 here): then the
    sender stops (exit 3, one sentence) and tells the receivers that had joined."""
    net: Lan = lan(3)
    source = tmp_path / "disk.img"
    random_file(source, 4 * MiB)
    url = "multicast://239.77.1.11:17510?iface=eth0"
    for k in range(101, 104):  # more addresses for the guesser's host
        sh("ip", "-n", net.hosts[1], "addr", "add", f"10.77.0.{k}/24", "dev", "eth0")
    log = (tmp_path / "sender.json").open("w+b")  # a line per attempt: not a pipe to fill
    tx = net.run(
        0, sys.executable, "-m", "p2pclone", "send", str(source), url, "--code", CODE,
        "--receivers", "2", "--wait", "30", "--json", stdout=log, stderr=subprocess.PIPE,
    )  # fmt: skip
    good = receiver(net, 2, tmp_path / "t2.img", url, tmp_path)  # one of the two joins
    me, wrong = net.addr(1), "9-wrong-guess"
    # Unbuffered (bufsize=0): a buffered readline() below can read the next lines too,
    # which communicate() then never sees -- this test's flake on a busy machine.
    guesser = net.run(
        1, sys.executable, GUESS, "239.77.1.11", "17510",
        f"{me},{wrong},250", f"{me},{CODE},1",  # many guesses, then the right code
        f"10.77.0.101,{wrong},3", f"10.77.0.102,{wrong},3", f"10.77.0.103,{CODE},1",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
    )  # fmt: skip
    assert guesser.stdout is not None
    steps = [json.loads(guesser.stdout.readline())]  # one line per step, as they end
    assert steps[0] == {"wrong": 3, "closed": 247}  # three guesses from one address
    g_out, g_err = guesser.communicate(timeout=120)
    assert guesser.returncode == 0, g_err.decode()
    steps += [json.loads(line) for line in g_out.splitlines()]
    assert steps[1] == {"closed": 1}  # ...and the right code no longer pairs from there
    assert steps[2] == {"wrong": 3}
    assert steps[3]["wrong"] == 2 and "plan" not in steps[3]  # the 8th failure: the end
    assert steps[4] in ({"refused": 1}, {"closed": 1})  # nobody pairs any more
    _, err = tx.communicate(timeout=30)
    assert tx.returncode == 3, err.decode()
    log.seek(0)
    last = events(log.read())[-1]
    assert last["event"] == "error" and last["code"] == "auth"
    assert "8 pairings with this sender failed" in last["message"]
    assert f"{me} x3" in last["message"] and "new code" in last["message"]
    _, r_err = good.communicate(timeout=30)
    assert good.returncode == 3 and b"pairings with this sender failed" in r_err, r_err.decode()


# A sender whose pairings time out after 2 s (30 s in real life), for the test below.
PATIENT = """
import sys
from p2pclone.cli import main
from p2pclone.multicast import door

door.HANDSHAKE_TIMEOUT = 2.0
sys.exit(main(sys.argv[1:]))
"""

# Port scans (connect, hang up) and a stranger's garbage, at HOST PORT.
STRANGER = """
import socket, sys

for k in range(40):
    with socket.create_connection((sys.argv[1], int(sys.argv[2]))) as s:
        if k % 2:
            s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
"""


def test_strangers_and_silent_connections_neither_count_nor_hold_the_sender(
    lan, tmp_path: Path
) -> None:
    """Catches a control port without a handshake timeout: connections that never
    speak kept their pairings waiting forever, so the sender never exited after the
    clone.  Also: port scans, garbage and silent connections are not failed pairings
    (the run ends 0), and the control port is bound to the iface= address."""
    net: Lan = lan(3)
    source = tmp_path / "disk.img"
    data = random_file(source, 4 * MiB)
    url = "multicast://239.77.1.12:17511?iface=eth0"
    tx = net.run(
        0, sys.executable, "-c", PATIENT, "send", str(source), url, "--code", CODE,
        "--receivers", "1", "--wait", "30", "--json",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert tx.stdout is not None
    connected = json.loads(tx.stdout.readline())
    if connected["event"] == "map":  # the source's layout comes first
        connected = json.loads(tx.stdout.readline())
    assert connected["event"] == "connected"
    assert f"control: tcp://{net.addr(0)}:" in connected["url"]  # not 0.0.0.0
    port = connected["url"].rsplit(":", 1)[1].rstrip(")")
    silent = net.run(
        1, sys.executable, GUESS, "239.77.1.12", "17511", f"{net.addr(1)},-,5",
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert silent.stdout is not None and json.loads(silent.stdout.readline()) == {"silent": 5}
    assert net.run(1, sys.executable, "-c", STRANGER, net.addr(0), port).wait(30) == 0
    rx = receiver(net, 2, tmp_path / "t2.img", url, tmp_path)
    try:
        out, err = tx.communicate(timeout=60)
        assert tx.returncode == 0, err.decode()
        assert rx.wait(30) == 0 and (tmp_path / "t2.img").read_bytes() == data
    finally:
        silent.kill()
        tx.kill()


def test_an_image_is_sent_to_a_multicast_group(lan, tmp_path: Path) -> None:
    """Issue 13: an image as the SOURCE of a multicast send.  Before, the multicast
    branch returned before the image check and opened the URL as a disk path ("no such
    file"); now the group sender reads the image through the same source as a unicast
    send, and both receivers end byte-identical with the disk the image was saved from."""
    net: Lan = lan(3)
    source = tmp_path / "disk.img"
    data = write_layout(source, 10 * MiB + 4096)
    image = f"file://{tmp_path}/pc1.p2pc"
    saved = subprocess.run(
        [sys.executable, "-m", "p2pclone", "send", str(source), image,
         "--passphrase", "image-words"],
        capture_output=True, env=dict(os.environ, P2PCLONE_STATE_DIR=str(tmp_path / "s0")),
    )  # fmt: skip
    assert saved.returncode == 0, saved.stderr.decode()
    url = "multicast://239.77.1.9:17509?iface=eth0"
    targets = [tmp_path / f"t{k}.img" for k in (1, 2)]
    rx = [receiver(net, k, t, url, tmp_path) for k, t in zip((1, 2), targets, strict=True)]
    tx = net.run(
        0, sys.executable, "-m", "p2pclone", "send", image, url, "--code", CODE,
        "--passphrase", "image-words", "--receivers", "2", "--wait", "30", "--json",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = tx.communicate(timeout=120)
    assert tx.returncode == 0, err.decode()
    assert events(out)[-1]["event"] == "done"
    for r in rx:
        r_out, r_err = r.communicate(timeout=60)
        assert r.returncode == 0, r_err.decode()
    for t in targets:
        assert t.read_bytes() == data


def test_a_real_disk_is_multicast_by_its_used_blocks(lan, tmp_path: Path) -> None:
    """Issue 14 over multicast: a GPT disk (FAT32 + ext4, free space full of old data)
    sent to two members whose targets hold other old data.  Each ends with every used
    byte identical and every free byte untouched, both report the same free_bytes,
    and the group carried less than the used bytes raw."""
    from p2pclone.volumes import scan
    from tests.volumes.builders import make_disk

    net: Lan = lan(3)
    source = tmp_path / "disk.img"
    size = 96 * MiB
    make_disk(source, size, [("fat32", 40 * MiB), ("ext4", 48 * MiB)])
    old = b"\x5a" * size
    targets = [tmp_path / f"t{k}.img" for k in (1, 2)]
    for t in targets:
        t.write_bytes(old)
    url = "multicast://239.77.1.14:17514?iface=eth0"
    rx = [receiver(net, k, t, url, tmp_path) for k, t in zip((1, 2), targets, strict=True)]
    tx = sender(net, source, url, 2)
    out, err = tx.communicate(timeout=120)
    assert tx.returncode == 0, err.decode()
    with open(source, "rb") as f:
        free = scan(lambda o, n: os.pread(f.fileno(), n, o), size).free
    assert free.total > 40 * MiB
    for r in rx:
        r_out, r_err = r.communicate(timeout=60)
        assert r.returncode == 0, r_err.decode()
        assert events(r_out)[-1]["free_bytes"] == free.total
    src = source.read_bytes()
    for t in targets:
        dst = t.read_bytes()
        assert all(dst[a:b] == src[a:b] for a, b in free.invert(0, size))
        assert all(dst[a:b] == old[a:b] for a, b in free)
    done = events(out)[-1]
    assert done["event"] == "done" and done["free_bytes"] == free.total
    assert done["wire_bytes"] < (size - free.total) * 1.2  # the random free space stayed home


def test_a_failing_disk_gives_every_member_the_same_holes(lan, tmp_path: Path) -> None:
    """Multicasting a failing source (a FUSE file failing reads in two places): the
    group goes on, every member gets the chunks naming the unreadable ranges whole over
    its own link, and every member and the sender end with exit 7 listing the same
    ranges; each target holds every readable byte and zeros in the holes.  Negative
    control (tried): such chunks sent through the group like any other, the run ends
    with exit 0."""
    from tests.disks.test_failing_source import need_fuse
    from tests.failing_disk import failing_disk

    need_fuse()
    net: Lan = lan(3)
    image = tmp_path / "disk.img"
    data = random_file(image, 12 * MiB)
    bad = [(3 * MiB + 4096, 512), (9 * MiB - 1024, 2048)]
    url = "multicast://239.77.1.9:17500?iface=eth0"
    targets = [tmp_path / f"t{k}.img" for k in (1, 2)]
    with failing_disk(image, [(s, n, -1) for s, n in bad]) as (disk, _log):
        rx = [receiver(net, k, t, url, tmp_path) for k, t in zip((1, 2), targets, strict=True)]
        tx = net.run(
            0, sys.executable, "-m", "p2pclone", "send", str(disk), url, "--code", CODE,
            "--receivers", "2", "--wait", "30", "--json", "--exact",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = tx.communicate(timeout=120)
        assert tx.returncode == 7, err.decode()
        assert events(out)[-1]["unreadable"] == [list(r) for r in bad]
        for r in rx:
            r_out, r_err = r.communicate(timeout=60)
            assert r.returncode == 7, r_err.decode()
            assert events(r_out)[-1]["unreadable"] == [list(r) for r in bad]
    holes = [(s, s + n) for s, n in bad]
    for t in targets:
        got = t.read_bytes()
        edges = [0] + [x for h in holes for x in h] + [len(data)]
        for a, b in zip(edges[::2], edges[1::2], strict=True):
            assert got[a:b] == data[a:b]
        assert all(got[a:b] == bytes(b - a) for a, b in holes)
