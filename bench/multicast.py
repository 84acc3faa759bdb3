"""Benchmark multicast clones: p2pclone against udpcast on the same namespace LAN, one run.

Usage (as root, from the repository root)::

    .venv/bin/python bench/multicast.py [--size-mib 256] [--repeat 3] [--out F.json] [--markdown F]

Method
------
A LAN in network namespaces, as the tests build it: a "switch" namespace with a
bridge, one namespace per host with a veth into it and a multicast route.  The
sender's link is shaped to 1 Gbit (``tc tbf rate 1gbit`` on its eth0).  The source is
the realistic ext4 image of bench/mkdisk.py; every receiver writes its own target file
and every target is compared with the source.  The page cache is dropped before each
run.  Time runs from starting the sender until every receiver process has exited.
Each case runs ``--repeat`` times, the cases taking turns; the median run is reported
(its time decides), with every run's time beside it.

* p2pclone multicast: ``p2pclone receive T multicast://239.77.9.9:17600?iface=eth0`` on
  each receiver, ``p2pclone send SRC multicast://…?iface=eth0 --receivers N``.
* udpcast: ``udp-receiver --interface eth0 --file T --nokbd`` on each receiver,
  ``udp-sender --interface eth0 --file SRC --min-receivers N --nokbd`` (it sends the raw
  disk, zeros included, unencrypted, unverified).
* p2pclone unicast to one receiver: ``receive T tcp://0.0.0.0:17611`` / ``send SRC
  tcp://10.77.0.2:17611``.
* Loss: nftables on the bridge drops 3 % of the frames towards one receiver.  Slow: a
  ``tbf`` of 100 Mbit (a tenth of the sender's link) towards one receiver; the figure
  is when the *other* receivers finish.

All hosts share this machine's two cores: with 8 receivers, 8 processes decompress,
hash and write at once (udpcast's receivers only write).  So every process runs under
GNU time, and the CPU seconds of the sender and of all receivers are reported beside
the wall time; and p2pclone multicast to a single receiver runs too, which compares
with the unicast clone at the same CPU load (not a target: the evidence for it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mkdisk  # noqa: E402
from common import drop_caches, identical, publish  # noqa: E402

MIB = 1 << 20
CODE = "7-acoustic-garden-rocket"
GROUP = "239.77.9.9"


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


class Lan:
    def __init__(self, n_hosts: int) -> None:
        self.tag = uuid.uuid4().hex[:5]
        self.switch = f"p2pb-{self.tag}-sw"
        self.hosts: list[str] = []
        sh("ip", "netns", "add", self.switch)
        sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        for k in range(n_hosts):
            host = f"p2pb-{self.tag}-h{k}"
            self.hosts.append(host)
            sh("ip", "netns", "add", host)
            sh("ip", "link", "add", self.port(k), "netns", self.switch, "type", "veth",
               "peer", "name", "eth0", "netns", host)  # fmt: skip
            sh("ip", "-n", self.switch, "link", "set", self.port(k), "master", "br0", "up")
            sh("ip", "-n", host, "addr", "add", f"10.77.0.{k + 1}/24", "brd", "+", "dev", "eth0")
            sh("ip", "-n", host, "link", "set", "eth0", "up")
            sh("ip", "-n", host, "link", "set", "lo", "up")
            sh("ip", "-n", host, "route", "add", "224.0.0.0/4", "dev", "eth0")
        sh("ip", "netns", "exec", self.hosts[0], "tc", "qdisc", "add", "dev", "eth0", "root",
           "tbf", "rate", "1gbit", "burst", "256kb", "latency", "50ms")  # fmt: skip

    def port(self, k: int) -> str:
        return f"b{self.tag}{k}"

    def loss(self, k: int, percent: int) -> None:
        script = (
            "add table bridge p2pb\n"
            "add chain bridge p2pb drops { type filter hook forward priority 0; }\n"
            f'add rule bridge p2pb drops oifname "{self.port(k)}" '
            f"numgen random mod 100 < {percent} drop\n"
        )
        subprocess.run(["ip", "netns", "exec", self.switch, "nft", "-f", "-"],
                       input=script.encode(), check=True, capture_output=True)  # fmt: skip

    def slow(self, k: int, rate: str) -> None:
        sh("ip", "netns", "exec", self.switch, "tc", "qdisc", "replace", "dev", self.port(k),
           "root", "tbf", "rate", rate, "burst", "256kb", "latency", "100ms")  # fmt: skip

    def run(self, k: int, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["ip", "netns", "exec", self.hosts[k], *argv], **kw)

    def close(self) -> None:
        for ns in [*self.hosts, self.switch]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def timed(argv: list[str], out: Path) -> list[str]:
    """``argv`` under GNU time, which writes its user + system CPU seconds to ``out``."""
    return ["/usr/bin/time", "-o", str(out), "-f", "%U %S", *argv]


def run_case(
    tool: str,
    python: str,
    source: Path,
    n: int,
    work: Path,
    *,
    loss: bool = False,
    slow: bool = False,
) -> dict[str, Any]:
    lan = Lan(n + 1)
    try:
        if loss:
            lan.loss(n, 3)
        if slow:
            lan.slow(n, "100mbit")
        targets = [work / f"t{k}.img" for k in range(1, n + 1)]
        for t in targets:
            t.unlink(missing_ok=True)
        env = dict(os.environ)
        url = f"multicast://{GROUP}:17600?iface=eth0"
        rx: list[subprocess.Popen[bytes]] = []
        for k, t in enumerate(targets, start=1):
            env_k = dict(env, P2PCLONE_STATE_DIR=str(work / f"state{k}"))
            shutil.rmtree(work / f"state{k}", ignore_errors=True)
            if tool == "p2pclone":
                argv = [python, "-m", "p2pclone", "receive", str(t), url, "--code", CODE, "--yes",
                        "--json"]  # fmt: skip
            elif tool == "unicast":
                argv = [python, "-m", "p2pclone", "receive", str(t), "tcp://0.0.0.0:17611",
                        "--code", CODE, "--yes", "--json"]  # fmt: skip
            else:
                argv = ["udp-receiver", "--interface", "eth0", "--file", str(t), "--nokbd",
                        "--portbase", "17700"]  # fmt: skip
            p = lan.run(k, timed(argv, work / f"cpu{k}"), stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL, env=env_k)  # fmt: skip
            if tool != "udpcast":
                assert p.stdout is not None
                p.stdout.readline()  # listening
            rx.append(p)
        if tool == "udpcast":
            time.sleep(0.5)
        drop_caches()
        if tool == "p2pclone":
            argv = [python, "-m", "p2pclone", "send", str(source), url, "--code", CODE,
                    "--receivers", str(n), "--wait", "60", "--json"]  # fmt: skip
        elif tool == "unicast":
            argv = [python, "-m", "p2pclone", "send", str(source), "tcp://10.77.0.2:17611",
                    "--code", CODE, "--json"]  # fmt: skip
        else:
            argv = ["udp-sender", "--interface", "eth0", "--file", str(source), "--nokbd",
                    "--min-receivers", str(n), "--portbase", "17700"]  # fmt: skip
        t0 = time.perf_counter()
        tx = lan.run(0, timed(argv, work / "cpu0"), stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)  # fmt: skip
        finished: dict[int, float] = {}
        while len(finished) < len(rx):
            for k, p in enumerate(rx):
                if k not in finished and p.poll() is not None:
                    finished[k] = time.perf_counter() - t0
            if time.perf_counter() - t0 > 1200:
                raise SystemExit(f"{tool}: timed out")
            time.sleep(0.01)
        tx.wait(300)
        ok = all(p.returncode == 0 for p in rx) and all(identical(source, t) for t in targets)
        cpu = [sum(map(float, (work / f"cpu{k}").read_text().split())) for k in range(n + 1)]
        for t in targets:
            t.unlink(missing_ok=True)
        times = [finished[k] for k in range(len(rx))]
        others = times[:-1] if (slow or loss) and len(times) > 1 else times
        res = {
            "tool": tool,
            "receivers": n,
            "loss": loss,
            "slow": slow,
            "all_done_s": max(times),
            "others_done_s": max(others),
            "per_receiver_s": times,
            "cpu_s": {"sender": cpu[0], "receivers": sum(cpu[1:])},
            "identical": ok,
        }
        print(f"[multicast] {res}", file=sys.stderr, flush=True)
        return res
    finally:
        lan.close()


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3, help="runs per case (the median is kept)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scratch", type=Path, default=Path("/var/tmp/p2pclone-bench"))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/multicast.py needs root (network namespaces)")
    if not shutil.which("udp-sender"):
        raise SystemExit("udp-sender not found: apt install udpcast")
    source = args.scratch / f"realistic-{args.size_mib}M.img"
    mkdisk.build_realistic(source, mkdisk.realistic_recipe(args.size_mib * MIB, args.seed))
    python = str(Path(".venv/bin/python").absolute()) if Path(".venv").is_dir() else sys.executable
    work = Path(tempfile.mkdtemp(prefix="p2pb-mc-", dir=args.scratch))
    runs: list[dict[str, Any]] = []
    cases: list[tuple[str, int, bool, bool]] = [
        ("p2pclone", 3, False, False),
        ("udpcast", 3, False, False),
        ("p2pclone", 8, False, False),
        ("udpcast", 8, False, False),
        ("unicast", 1, False, False),
        ("p2pclone", 1, False, False),
        ("p2pclone", 3, True, False),
        ("p2pclone", 3, False, True),
    ]
    tries: dict[tuple[str, int, bool, bool], list[dict[str, Any]]] = {c: [] for c in cases}
    try:
        for _ in range(args.repeat):  # the cases alternate, so slow spells hit all alike
            for tool, n, loss, slow in cases:
                res = run_case(tool, python, source, n, work, loss=loss, slow=slow)
                tries[(tool, n, loss, slow)].append(res)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for case in cases:
        ordered = sorted(
            tries[case], key=lambda r: r["others_done_s"] if case[3] else r["all_done_s"]
        )
        median = dict(ordered[len(ordered) // 2])
        median["runs_s"] = [r["others_done_s"] if case[3] else r["all_done_s"] for r in tries[case]]
        median["identical"] = all(r["identical"] for r in tries[case])
        runs.append(median)

    def find(tool: str, n: int, loss: bool = False, slow: bool = False) -> dict[str, Any]:
        return next(
            r
            for r in runs
            if (r["tool"], r["receivers"], r["loss"], r["slow"]) == (tool, n, loss, slow)
        )

    targets = []
    for n in (3, 8):
        p, u = find("p2pclone", n), find("udpcast", n)
        ratio = p["all_done_s"] / u["all_done_s"]
        targets.append((f"{n} receivers: p2pclone / udpcast time", ratio, "<= 0.6", ratio <= 0.6))
        uni = find("unicast", 1)["all_done_s"]
        ratio = p["all_done_s"] / uni
        targets.append(
            (f"{n} receivers: p2pclone multicast / unicast to one", ratio, "<= 1.3", ratio <= 1.3)
        )
    base = find("p2pclone", 3)["all_done_s"]
    lossy = find("p2pclone", 3, loss=True)["all_done_s"]
    targets.append(
        ("3 % loss at one receiver: time / lossless", lossy / base, "<= 1.5", lossy / base <= 1.5)
    )
    slow_others = find("p2pclone", 3, slow=True)["others_done_s"]
    targets.append(
        ("one receiver at a tenth: the others' time / without it", slow_others / base, "<= 1.2",
         slow_others / base <= 1.2)
    )  # fmt: skip
    res = {
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"python bench/multicast.py --size-mib {args.size_mib} --repeat {args.repeat}",
        "runs": runs,
        "targets": [{"target": t, "value": v, "goal": g, "pass": ok} for t, v, g, ok in targets],
    }
    lines = [
        f"Multicast on a namespace LAN (sender link 1 Gbit), realistic disk of {args.size_mib} "
        f"MiB, {res['when']} (`{res['command']}`)",
        "",
        "| tool | receivers | condition | all done (s) | others done (s) | identical | runs (s) "
        "| CPU s: sender + receivers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        cond = "3 % loss at one" if r["loss"] else "one at 100 Mbit" if r["slow"] else "clean"
        lines.append(
            f"| {r['tool']} | {r['receivers']} | {cond} | {r['all_done_s']:.2f} | "
            f"{r['others_done_s']:.2f} | {'yes' if r['identical'] else 'NO'} | "
            f"{' / '.join(f'{t:.2f}' for t in r['runs_s'])} | "
            f"{r['cpu_s']['sender']:.2f} + {r['cpu_s']['receivers']:.2f} |"
        )
    lines += ["", "| target | value | goal | |", "|---|---|---|---|"]
    lines += [f"| {t} | {v:.3f} | {g} | {'PASS' if ok else 'FAIL'} |" for t, v, g, ok in targets]
    text = "\n".join(lines) + "\n"
    publish(res, text, args.out, args.markdown)
    return 0 if all(r["identical"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
