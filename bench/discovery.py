"""Benchmark finding the receiver by its code (issue 16): discovery latency, and a clone
with no URL beside one with the explicit URL, in one run.

    sudo .venv/bin/python bench/discovery.py [--size-mib 1024] [--repeat 5]
                                             [--out F.json] [--markdown F]

Two network namespaces joined by one veth pair with no IPv4 at all (only the automatic
IPv6 link-local addresses, as on a bare crossover cable without DHCP).  The receiver
(`p2pclone receive TARGET`, no URL) is started and announces itself; then, alternating:

* no URL: `p2pclone send SOURCE` — it finds the receiver over mDNS;
* explicit: `p2pclone send SOURCE tcp://[fe80::…%eth0]:7411`.

Measured per run, from the sender's start: until its `connected` line (the receiver
found and the TCP connection made) and until it exits (the whole clone of a
`--size-mib` pseudo-random disk).  Targets: discovery <= 2 s median; the clone with no
URL <= 1.05 x the explicit one's time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import publish  # noqa: E402

MIB = 1 << 20
CLI = [sys.executable, "-m", "p2pclone"]


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def cable() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:6]
    a, b = f"p2pb-{tag}-a", f"p2pb-{tag}-b"
    for ns in (a, b):
        sh("ip", "netns", "add", ns)
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
           "net.ipv6.conf.default.accept_dad=0")  # fmt: skip
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "link", "add", "eth0", "netns", a, "type", "veth", "peer", "name", "eth0",
       "netns", b)  # fmt: skip
    for ns in (a, b):
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
    time.sleep(0.5)
    return a, b


def one_run(a: str, b: str, source: Path, target: Path, url: str | None) -> dict[str, Any]:
    code = f"{os.getpid() % 90 + 10}-bench-discovery"
    env = {**os.environ, "P2PCLONE_CODE": code, "P2PCLONE_STATE_DIR": tempfile.mkdtemp()}
    target.unlink(missing_ok=True)
    rx = subprocess.Popen(
        ["ip", "netns", "exec", b, *CLI, "receive", str(target), "--yes", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert rx.stdout is not None
    rx.stdout.readline()  # listening, announced
    started = time.monotonic()
    tx = subprocess.Popen(
        ["ip", "netns", "exec", a, *CLI, "send", str(source), *([url] if url else []),
         "--exact", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert tx.stdout is not None
    connected = None
    for line in tx.stdout:
        if '"connected"' in line and connected is None:
            connected = time.monotonic() - started
    tx.wait(300)
    took = time.monotonic() - started
    rx.communicate(timeout=60)
    same = subprocess.run(["cmp", "-s", str(source), str(target)]).returncode == 0
    return {
        "connected": round(connected or -1, 3),
        "seconds": round(took, 3),
        "exit": [tx.returncode, rx.returncode],
        "identical": same,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    source = scratch / f"discovery-{args.size_mib}.img"
    if not source.exists() or source.stat().st_size != args.size_mib * MIB:
        with open(source, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MIB))
    target = scratch / "discovery-target.img"
    a, b = cable()
    try:
        shown = sh("ip", "-n", b, "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link")
        address = shown.split("inet6 ")[1].split("/")[0]
        explicit = f"tcp://[{address}%eth0]:7411"
        runs: dict[str, list[dict[str, Any]]] = {"no URL": [], "explicit URL": []}
        for _ in range(args.repeat):
            runs["no URL"].append(one_run(a, b, source, target, None))
            runs["explicit URL"].append(one_run(a, b, source, target, explicit))
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        target.unlink(missing_ok=True)
    median = {
        name: {k: statistics.median(r[k] for r in rs) for k in ("connected", "seconds")}
        for name, rs in runs.items()
    }
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "size_bytes": args.size_mib * MIB,
        "repeat": args.repeat,
        "runs": runs,
        "median": median,
    }


def markdown(res: dict[str, Any], command: str) -> str:
    m = res["median"]
    ok = all(r["identical"] and r["exit"] == [0, 0] for rs in res["runs"].values() for r in rs)
    rows = [
        ("discovery latency (no URL): sender start to connected, median s", "<= 2",
         m["no URL"]["connected"]),
        ("clone time, no URL / explicit URL", "<= 1.05",
         m["no URL"]["seconds"] / m["explicit URL"]["seconds"]),
    ]  # fmt: skip
    lines = [
        f"Command: `{command}` ({res['date']}; {res['size_bytes'] >> 20} MiB, "
        f"median of {res['repeat']}, IPv6 link-local veth, no IPv4)",
        "",
        "| sender | connected after (s) | clone (s) |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {v['connected']} | {v['seconds']} |" for name, v in m.items()]
    lines += ["", "| target | goal | measured | |", "|---|---|---|---|"]
    lines += [
        f"| {n} | {g} | {round(v, 3)} | {'PASS' if v <= float(g.split()[-1]) else 'FAIL'} |"
        for n, g, v in rows
    ]
    lines.append(f"\nEvery run byte-identical with exit 0 on both sides: {ok}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--scratch", default="/var/tmp/p2pclone-bench")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    res = run(args)
    command = "sudo .venv/bin/python bench/discovery.py " + " ".join(sys.argv[1:])
    publish(res, markdown(res, command.strip()), args.out, args.markdown)


if __name__ == "__main__":
    main()
