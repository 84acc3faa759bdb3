"""Benchmark p2pclone against netcat pipelines.

Usage (as root, from the repository root)::

    .venv/bin/python bench/run.py [--size-gib 1] [--quick] [--out docs/benchmarks-results.json]

Method
------
Every run copies a SOURCE file into a fresh TARGET file in the scratch directory
(on disk), with one "receiver" side and one "sender" side, each a pipeline of
processes started through ``ip netns exec``:

* p2pclone:   ``python -m p2pclone receive TARGET tcp://HOST:PORT --json`` /
              ``python -m p2pclone send SOURCE tcp://HOST:PORT --json``
* cat | nc:   ``cat SOURCE | nc -N HOST PORT``  ->  ``nc -l HOST PORT | dd of=TARGET ...``
* dd | nc:    ``dd if=SOURCE bs=1M | nc -N HOST PORT``  ->  ``nc -l HOST PORT | dd of=TARGET ...``
* zstd | nc:  ``zstd -1 -T0 -c SOURCE | nc -N HOST PORT``
              ->  ``nc -l HOST PORT | zstd -d | dd of=TARGET ...``

Every baseline writes with ``dd of=TARGET bs=1M iflag=fullblock conv=fsync``, so
like p2pclone's receiver it has fsynced the target before it exits.

Fairness choices:

* The page cache is dropped (``sync; echo 3 > /proc/sys/vm/drop_caches``) before
  every run, so every tool reads its source cold; whether that worked is recorded.
* Inputs are fully allocated files (never sparse): free space in the ext4 image is
  real zero blocks that must be read from the device.
* Wall time runs from launching the sender (the receiver is already listening:
  p2pclone's ``listening`` JSON line, or the port showing up in ``ss -ltn`` for nc)
  until every process of both sides has exited, i.e. the target is complete and
  fsynced.  Interpreter start-up of the sender counts; that of the receiver does not.
* "loopback" runs in a private network namespace (p2pb-lo, 127.0.0.1), so its
  ``lo`` byte counter sees nothing but the run's own traffic.  The "1 Gbit link" is
  a veth pair between namespaces p2pb-a (sender, 10.231.0.1) and p2pb-b (receiver,
  10.231.0.2), both ends shaped with ``tc ... tbf rate 1gbit burst 256kb latency 50ms``
  (no added delay: this kernel has no netem).
* Wire bytes are interface byte counters (``ip -s link``), taken before and after
  each run: for the link, the sender-side veth's tx bytes (the data direction,
  IP+TCP headers included, counted per GSO super-packet so slightly below real
  Ethernet framing); for loopback, ``lo``'s tx bytes (both directions, ACKs
  included).  p2pclone's self-reported payload ``wire_bytes`` is recorded too.
* Peak RSS: every process runs as ``ip netns exec NS /usr/bin/time -f %M -o FILE CMD``,
  so CMD is forked from the small GNU time process and its ``%M`` (max RSS) is its own.
  (``ru_maxrss`` of a process spawned straight from this harness would include the
  harness's own peak, inherited through vfork/exec.)  Without /usr/bin/time the
  harness falls back to ``os.wait4`` and says so.  A side's RSS is the SUM of its
  processes' peaks (they run concurrently, so this is the pipeline's footprint; an
  upper bound).  CPU seconds (user+sys) come from ``os.wait4`` and are summed per
  side.  The per-process figures are in the JSON.
* Every target is compared with its source (``cmp``); a difference is a FAILURE.
* Sender and receiver share one machine (its cores, its disk) in every setting.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mkdisk  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MB = 1_000_000
MIB = 1 << 20
GIB = 1 << 30
CODE = "7-bench-run"
FIRST_PORT = 7411
READY_TIMEOUT = 30.0
GNU_TIME = "/usr/bin/time"
USE_GNU_TIME = os.access(GNU_TIME, os.X_OK)

NS_LO, NS_A, NS_B = "p2pb-lo", "p2pb-a", "p2pb-b"
VETH_A, VETH_B = "p2pb-va", "p2pb-vb"
ADDR_A, ADDR_B = "10.231.0.1", "10.231.0.2"
TBF = ["tbf", "rate", "1gbit", "burst", "256kb", "latency", "50ms"]


# --------------------------------------------------------------------------- networks


@dataclass(frozen=True)
class Network:
    key: str
    title: str
    send_ns: str
    recv_ns: str
    host: str
    data_if: tuple[str, str]  # (namespace, interface) whose tx bytes are the wire figure
    reverse_if: tuple[str, str] | None = None


LOOPBACK = Network(
    "loopback", "loopback (127.0.0.1, private netns)", NS_LO, NS_LO, "127.0.0.1", (NS_LO, "lo")
)
LINK = Network(
    "link",
    "1 Gbit link (veth + tbf 1gbit between two netns)",
    NS_A,
    NS_B,
    ADDR_B,
    (NS_A, VETH_A),
    (NS_B, VETH_B),
)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def teardown_netns() -> None:
    for ns in (NS_LO, NS_A, NS_B):
        _ip("netns", "del", ns, check=False)
    _ip("link", "del", VETH_A, check=False)  # a stray pair left in the root namespace


def setup_netns() -> dict[str, Any]:
    teardown_netns()
    for ns in (NS_LO, NS_A, NS_B):
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
    _ip("link", "add", VETH_A, "type", "veth", "peer", "name", VETH_B)
    for ns, dev, addr in ((NS_A, VETH_A, ADDR_A), (NS_B, VETH_B, ADDR_B)):
        _ip("link", "set", dev, "netns", ns)
        _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        _ip("-n", ns, "link", "set", dev, "up")
        subprocess.run(
            ["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", *TBF],
            check=True,
            capture_output=True,
            text=True,
        )
    shown = {
        dev: subprocess.run(
            ["tc", "-n", ns, "qdisc", "show", "dev", dev], capture_output=True, text=True
        ).stdout.strip()
        for ns, dev in ((NS_A, VETH_A), (NS_B, VETH_B))
    }
    return {
        "qdisc_command": "tc qdisc add dev VETH root " + " ".join(TBF),
        "qdisc_show": shown,
        "veth_mtu": 1500,
        "offloads": "kernel defaults (GSO/GRO on)",
    }


def tx_bytes(ns: str, dev: str) -> int:
    out = _ip("-n", ns, "-j", "-s", "link", "show", "dev", dev).stdout
    return int(json.loads(out)[0]["stats64"]["tx"]["bytes"])


def port_listening(ns: str, port: int) -> bool:
    r = subprocess.run(
        ["ip", "netns", "exec", ns, "ss", "-ltnH", f"sport = :{port}"],
        capture_output=True,
        text=True,
    )
    return bool(r.stdout.strip())


# --------------------------------------------------------------------------- tools

Stages = list[list[str]]


@dataclass(frozen=True)
class Tool:
    key: str
    name: str
    sender: Callable[[Path, str, int], Stages]
    receiver: Callable[[Path, str, int], Stages]
    json_events: bool = False  # p2pclone: JSON lines on stdout, "listening" marks readiness


def make_tools(python: str, sparse_baselines: bool = False) -> dict[str, Tool]:
    """The contenders; ``sparse_baselines`` lets the baselines' dd skip writing zero blocks."""
    conv = "conv=sparse,fsync" if sparse_baselines else "conv=fsync"

    def dd_out(target: Path) -> list[str]:
        return ["dd", f"of={target}", "bs=1M", "iflag=fullblock", conv, "status=none"]

    def nc_listen(host: str, port: int) -> list[str]:
        return ["nc", "-l", host, str(port)]

    def nc_send(host: str, port: int) -> list[str]:
        return ["nc", "-N", host, str(port)]

    def p2p_send(src: Path, host: str, port: int) -> Stages:
        url = f"tcp://{host}:{port}"
        return [[python, "-m", "p2pclone", "send", str(src), url, "--code", CODE, "--json"]]

    def p2p_recv(dst: Path, host: str, port: int) -> Stages:
        url = f"tcp://{host}:{port}"
        return [
            [python, "-m", "p2pclone", "receive", str(dst), url, "--code", CODE, "--yes"]
            + ["--json"]
        ]

    tools = [
        Tool("p2pclone", "p2pclone", p2p_send, p2p_recv, json_events=True),
        Tool(
            "cat-nc",
            "cat | nc",
            lambda s, h, p: [["cat", str(s)], nc_send(h, p)],
            lambda t, h, p: [nc_listen(h, p), dd_out(t)],
        ),
        Tool(
            "dd-nc",
            "dd | nc",
            lambda s, h, p: [["dd", f"if={s}", "bs=1M", "status=none"], nc_send(h, p)],
            lambda t, h, p: [nc_listen(h, p), dd_out(t)],
        ),
        Tool(
            "zstd-nc",
            "zstd -1 -T0 | nc | zstd -d",
            lambda s, h, p: [["zstd", "-1", "-T0", "-q", "-c", str(s)], nc_send(h, p)],
            lambda t, h, p: [nc_listen(h, p), ["zstd", "-d", "-q", "-c"], dd_out(t)],
        ),
    ]
    return {t.key: t for t in tools}


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    argv: list[str]
    popen: subprocess.Popen[bytes]
    stderr_path: Path
    rss_path: Path | None
    end: float | None = None
    exit_code: int | None = None
    maxrss_kib: int = 0
    cpu_user: float = 0.0
    cpu_sys: float = 0.0
    reaper: threading.Thread | None = None

    def reap(self) -> None:
        _, status, ru = os.wait4(self.popen.pid, 0)
        self.end = time.monotonic()
        self.exit_code = os.waitstatus_to_exitcode(status)
        self.popen.returncode = self.exit_code  # we reaped it; keep subprocess from trying again
        self.maxrss_kib = ru.ru_maxrss
        self.cpu_user, self.cpu_sys = ru.ru_utime, ru.ru_stime
        if self.rss_path is not None:  # GNU time's figure for the command alone
            try:
                lines = self.rss_path.read_text().split()
                self.maxrss_kib = int(lines[-1])
            except (OSError, ValueError, IndexError):
                pass  # killed before time could write it: keep the wait4 upper bound


@dataclass
class Side:
    """One end of a transfer: a pipeline of processes sharing one process group."""

    name: str
    ns: str
    stages: Stages
    json_events: bool
    log_dir: Path
    env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    other_stdout: list[str] = field(default_factory=list)
    listening: threading.Event = field(default_factory=threading.Event)
    pgid: int = 0
    _reader: threading.Thread | None = None

    def start(self) -> None:
        prev: IO[bytes] | int = subprocess.DEVNULL
        for i, argv in enumerate(self.stages):
            last = i == len(self.stages) - 1
            err_path = self.log_dir / f"{self.name}-{i}-{Path(argv[0]).name}.stderr"
            rss_path = err_path.with_suffix(".maxrss") if USE_GNU_TIME else None
            wrap = [GNU_TIME, "-f", "%M", "-o", str(rss_path)] if rss_path else []
            full = ["ip", "netns", "exec", self.ns, *wrap, *argv]
            with open(err_path, "wb") as err:
                p = subprocess.Popen(
                    full,
                    stdin=prev,
                    stderr=err,
                    cwd=REPO,
                    env=self.env,
                    stdout=subprocess.PIPE
                    if (not last or self.json_events)
                    else subprocess.DEVNULL,
                    process_group=self.pgid,
                )
            if not self.pgid:
                self.pgid = p.pid
            if not isinstance(prev, int):
                prev.close()  # the next stage owns the read end now
            proc = Proc(argv, p, err_path, rss_path)
            proc.reaper = threading.Thread(target=proc.reap, daemon=True)
            proc.reaper.start()
            self.procs.append(proc)
            if not last:
                assert p.stdout is not None
                prev = p.stdout
        if self.json_events:
            out = self.procs[-1].popen.stdout
            assert out is not None
            self._reader = threading.Thread(target=self._read_json, args=(out,), daemon=True)
            self._reader.start()

    def _read_json(self, out: IO[bytes]) -> None:
        for raw in out:
            line = raw.decode(errors="replace").strip()
            if not line:
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                self.other_stdout.append(line)
                continue
            if isinstance(ev, dict):
                self.events.append(ev)
                if ev.get("event") == "listening":
                    self.listening.set()
            else:
                self.other_stdout.append(line)
        out.close()

    def exited(self) -> bool:
        return any(p.end is not None for p in self.procs)

    def wait(self, deadline: float) -> bool:
        for p in self.procs:
            assert p.reaper is not None
            p.reaper.join(max(0.0, deadline - time.monotonic()))
            if p.reaper.is_alive():
                return False
        if self._reader is not None:
            self._reader.join(5)
        return True

    def kill(self) -> None:
        if self.pgid and any(p.end is None for p in self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)
        for p in self.procs:
            if p.reaper is not None:
                p.reaper.join(10)

    def event(self, name: str) -> dict[str, Any] | None:
        return next((e for e in reversed(self.events) if e.get("event") == name), None)

    def stderr_tail(self, limit: int = 1500) -> str:
        parts = []
        for p in self.procs:
            try:
                text = p.stderr_path.read_text(errors="replace").strip()
            except OSError:
                continue
            if text:
                parts.append(f"[{Path(p.argv[0]).name}] {text[-limit:]}")
        return "\n".join(parts)

    def summary(self) -> dict[str, Any]:
        return {
            "rss_kib_sum": sum(p.maxrss_kib for p in self.procs),
            "rss_kib_max": max((p.maxrss_kib for p in self.procs), default=0),
            "cpu_seconds": round(sum(p.cpu_user + p.cpu_sys for p in self.procs), 3),
            "processes": [
                {
                    "argv": p.argv,
                    "exit_code": p.exit_code,
                    "maxrss_kib": p.maxrss_kib,
                    "cpu_user": round(p.cpu_user, 3),
                    "cpu_sys": round(p.cpu_sys, 3),
                }
                for p in self.procs
            ],
        }


# --------------------------------------------------------------------------- one run


def become_subreaper() -> None:
    """Adopt orphans: a killed GNU time leaves its child to us, not to a PID 1 that may not reap."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def reap_orphans(grace: float = 2.0) -> None:
    """Collect adopted children; call only when no tracked child is still running."""
    deadline = time.monotonic() + grace
    with contextlib.suppress(ChildProcessError):  # raised once we have no children at all
        while True:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.01)


def drop_caches() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def files_identical(a: Path, b: Path) -> tuple[bool, str]:
    r = subprocess.run(["cmp", str(a), str(b)], capture_output=True, text=True)
    return r.returncode == 0, (r.stdout + r.stderr).strip()


def run_once(
    tool: Tool,
    net: Network,
    source: Path,
    target: Path,
    port: int,
    timeout: float,
    env: dict[str, str],
    log_dir: Path,
) -> dict[str, Any]:
    log_dir.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    res: dict[str, Any] = {
        "tool": tool.key,
        "network": net.key,
        "source": str(source),
        "source_bytes": source.stat().st_size,
        "port": port,
        "ok": False,
        "error": None,
    }
    res["caches_dropped"] = drop_caches()
    recv = Side(
        "receiver",
        net.recv_ns,
        tool.receiver(target, net.host, port),
        tool.json_events,
        log_dir,
        env,
    )
    send = Side(
        "sender", net.send_ns, tool.sender(source, net.host, port), tool.json_events, log_dir, env
    )
    res["receiver_cmd"] = " | ".join(shlex.join(s) for s in recv.stages)
    res["sender_cmd"] = " | ".join(shlex.join(s) for s in send.stages)
    try:
        recv.start()
        ready_deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if tool.json_events and recv.listening.wait(0.02):
                break
            if not tool.json_events and port_listening(net.recv_ns, port):
                break
            if recv.exited():
                raise RuntimeError("receiver exited before it was listening")
            if time.monotonic() > ready_deadline:
                raise RuntimeError(f"receiver not listening after {READY_TIMEOUT:.0f} s")
        before = (tx_bytes(*net.data_if), tx_bytes(*net.reverse_if) if net.reverse_if else 0)
        t0 = time.monotonic()
        send.start()
        deadline = t0 + timeout
        finished = send.wait(deadline) and recv.wait(deadline)
        if not finished:
            raise TimeoutError(f"timed out after {timeout:.0f} s")
        t1 = max(p.end for p in send.procs + recv.procs if p.end is not None)
        after = (tx_bytes(*net.data_if), tx_bytes(*net.reverse_if) if net.reverse_if else 0)
        wall = t1 - t0
        res.update(
            wall_seconds=round(wall, 3),
            throughput_MBps=round(res["source_bytes"] / wall / MB, 2),
            wire_bytes_iface=after[0] - before[0],
            wire_bytes_iface_reverse=(after[1] - before[1]) if net.reverse_if else None,
        )
        bad = [
            (s.name, p.argv[0], p.exit_code)
            for s in (send, recv)
            for p in s.procs
            if p.exit_code != 0
        ]
        if bad:
            raise RuntimeError(
                "non-zero exit: " + ", ".join(f"{n} {Path(a).name}={c}" for n, a, c in bad)
            )
        if tool.json_events:
            for side in (send, recv):
                err = side.event("error")
                if err is not None or side.event("done") is None:
                    raise RuntimeError(f"{side.name} did not report done: {err}")
        same, detail = files_identical(source, target)
        res["verified"] = same
        if not same:
            raise RuntimeError(f"TARGET DIFFERS FROM SOURCE: {detail}")
        res["ok"] = True
    except Exception as e:  # noqa: BLE001 - every failure is reported, never raised
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        send.kill()
        recv.kill()
        reap_orphans()
        res["sender"], res["receiver"] = send.summary(), recv.summary()
        if tool.json_events:
            res["sender_events"] = [
                e for e in send.events if e.get("event") in ("done", "error", "listening")
            ]
            res["receiver_events"] = [
                e for e in recv.events if e.get("event") in ("done", "error", "listening")
            ]
            done = send.event("done") or recv.event("done")
            res["wire_bytes_self_reported"] = done.get("wire_bytes") if done else None
        if not res["ok"]:
            res["stderr"] = {"sender": send.stderr_tail(), "receiver": recv.stderr_tail()}
            if tool.json_events:
                res["stdout_other"] = {
                    "sender": send.other_stdout[-20:],
                    "receiver": recv.other_stdout[-20:],
                }
        target.unlink(missing_ok=True)
    return res


# --------------------------------------------------------------------------- environment


def _cmd_out(argv: list[str], **kw: Any) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    out: str = (r.stdout or r.stderr).strip()
    return out


def meminfo_kib(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def machine_info(python: str, env: dict[str, str], scratch: Path) -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    os_name = "?"
    try:
        for ln in Path("/etc/os-release").read_text().splitlines():
            if ln.startswith("PRETTY_NAME="):
                os_name = ln.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "memory": f"{meminfo_kib('MemTotal') / MIB:.1f} GiB",
        "os": os_name,
        "kernel": platform.release(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "mem_available_at_start": f"{meminfo_kib('MemAvailable') / MIB:.1f} GiB",
        "python": _cmd_out([python, "-c", "import sys; print(sys.version.split()[0])"]),
        "scratch_fs": _cmd_out(["findmnt", "-n", "-T", str(scratch), "-o", "SOURCE,FSTYPE"]),
        "tools": {
            "p2pclone": _cmd_out(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
            "trio": _cmd_out([python, "-c", "import trio; print(trio.__version__)"], env=env),
            "netcat-openbsd": _cmd_out(["dpkg-query", "-W", "-f=${Version}", "netcat-openbsd"]),
            "zstd": _cmd_out(["zstd", "-V"]).split(" v")[-1].split(",")[0],
            "dd (coreutils)": _cmd_out(["dd", "--version"]).splitlines()[0].split()[-1],
            "iproute2": _cmd_out(["ip", "-V"]).split("iproute2-")[-1].split(",")[0],
            "GNU time": _cmd_out(["dpkg-query", "-W", "-f=${Version}", "time"])
            if USE_GNU_TIME
            else "missing",
            "e2fsprogs": _cmd_out(["dpkg-query", "-W", "-f=${Version}", "e2fsprogs"]),
        },
    }


def p2pclone_available(python: str, env: dict[str, str]) -> tuple[bool, str]:
    try:
        r = subprocess.run(
            [python, "-m", "p2pclone", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            env=env,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    return r.returncode == 0, (r.stderr or r.stdout).strip()[-500:]


# --------------------------------------------------------------------------- reporting


def _esc(s: str, markdown: bool) -> str:
    return s.replace("|", "\\|") if markdown else s


def table(headers: list[str], rows: list[list[str]], markdown: bool = True) -> str:
    rows = [[_esc(c, markdown) for c in r] for r in rows]
    headers = [_esc(h, markdown) for h in headers]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    if markdown:

        def fmt(cells: list[str]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

        sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    else:

        def fmt(cells: list[str]) -> str:
            return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

        sep = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(headers), sep, *(fmt(r) for r in rows)])


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median (by wall time) of the successful repeats; any failed repeat marks the entry FAILED."""
    good = sorted((r for r in runs if r["ok"]), key=lambda r: r["wall_seconds"])
    failed = [r for r in runs if not r["ok"]]
    rep = good[(len(good) - 1) // 2] if good else None
    out: dict[str, Any] = {
        "status": "FAILED" if failed else "ok",
        "repeats": len(runs),
        "errors": [r["error"] for r in failed],
        "wall_seconds_all": [r.get("wall_seconds") for r in runs],
    }
    if rep is not None:
        out.update(
            {
                k: rep.get(k)
                for k in (
                    "wall_seconds",
                    "throughput_MBps",
                    "wire_bytes_iface",
                    "wire_bytes_iface_reverse",
                    "wire_bytes_self_reported",
                )
            }
        )
        out["sender_rss_kib"] = rep["sender"]["rss_kib_sum"]
        out["receiver_rss_kib"] = rep["receiver"]["rss_kib_sum"]
        out["sender_cpu_seconds"] = rep["sender"]["cpu_seconds"]
        out["receiver_cpu_seconds"] = rep["receiver"]["cpu_seconds"]
        walls = [r["wall_seconds"] for r in good]
        out["wall_seconds_stdev"] = round(statistics.stdev(walls), 3) if len(walls) > 1 else None
    return out


SUMMARY_HEADERS = [
    "input",
    "tool",
    "status",
    "wall s",
    "MB/s",
    "wire MiB (iface)",
    "wire/size",
    "p2pclone wire MiB",
    "RSS send MiB",
    "RSS recv MiB",
    "CPU send s",
    "CPU recv s",
]


def summary_rows(entries: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for e in entries:
        s = e["summary"]
        size = e["source_bytes"]
        if "wall_seconds" not in s:
            rows.append([e["input"], e["tool_name"], s["status"]] + ["-"] * 9)
            continue
        walls = [w for w in s["wall_seconds_all"] if w is not None]
        wall = f"{s['wall_seconds']:.2f}" + (
            f" ({', '.join(f'{w:.2f}' for w in walls)})" if len(walls) > 1 else ""
        )
        selfw = s.get("wire_bytes_self_reported")
        rows.append(
            [
                e["input"],
                e["tool_name"],
                s["status"],
                wall,
                f"{s['throughput_MBps']:.1f}",
                f"{s['wire_bytes_iface'] / MIB:.1f}",
                f"{s['wire_bytes_iface'] / size:.3f}",
                "-" if selfw is None else f"{selfw / MIB:.1f}",
                _mib(s["sender_rss_kib"]),
                _mib(s["receiver_rss_kib"]),
                f"{s['sender_cpu_seconds']:.2f}",
                f"{s['receiver_cpu_seconds']:.2f}",
            ]
        )
    return rows


def evaluate_targets(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def get(setting: str, inp: str, tool: str) -> dict[str, Any] | None:
        for e in entries:
            if (e["setting"], e["input"], e["tool"]) == (setting, inp, tool) and e["summary"][
                "status"
            ] == "ok":
                return e
        return None

    def ratio(setting: str, inp: str, a: str, b: str) -> tuple[float | None, str]:
        ea, eb = get(setting, inp, a), get(setting, inp, b)
        if ea is None or eb is None:
            return None, f"missing: {a if ea is None else b}"
        ta, tb = ea["summary"]["throughput_MBps"], eb["summary"]["throughput_MBps"]
        return ta / tb, f"{ta:.1f} / {tb:.1f} MB/s"

    out: list[dict[str, Any]] = []

    def add(
        name: str, value: tuple[float | None, str], op: str, target: float, unit: str = ""
    ) -> None:
        v, detail = value
        status = (
            "N/A"
            if v is None
            else ("PASS" if (v >= target if op == ">=" else v <= target) else "FAIL")
        )
        out.append(
            {
                "target": name,
                "value": None if v is None else round(v, 3),
                "op": op,
                "threshold": target,
                "unit": unit,
                "status": status,
                "detail": detail,
            }
        )

    add(
        "1 Gbit link, realistic disk: p2pclone / dd|nc throughput",
        ratio("link", "realistic", "p2pclone", "dd-nc"),
        ">=",
        2.5,
    )
    add(
        "1 Gbit link, random disk: p2pclone / dd|nc throughput",
        ratio("link", "random", "p2pclone", "dd-nc"),
        ">=",
        0.9,
    )
    add(
        "loopback, realistic disk: p2pclone / zstd -1 -T0|nc|zstd -d throughput",
        ratio("loopback", "realistic", "p2pclone", "zstd-nc"),
        ">=",
        1.0,
    )

    wire: tuple[float | None, str] = (None, "missing: p2pclone realistic run")
    for setting, what in (
        ("link", "sender veth tx bytes"),
        ("loopback", "lo tx bytes, both directions"),
    ):
        e = get(setting, "realistic", "p2pclone")
        if e is not None:
            s = e["summary"]
            selfw = s.get("wire_bytes_self_reported")
            extra = "" if selfw is None else f"; self-reported {selfw / e['source_bytes']:.3f}"
            wire = (s["wire_bytes_iface"] / e["source_bytes"], f"{setting}: {what}{extra}")
            break
    add("wire bytes / disk size, realistic disk (p2pclone)", wire, "<=", 0.45)

    e = get("rss", "realistic-rss", "p2pclone")
    rss: tuple[float | None, str] = (None, "missing: p2pclone RSS run")
    if e is not None:
        s = e["summary"]
        rss = (
            max(s["sender_rss_kib"], s["receiver_rss_kib"]) / 1024,
            f"{e['source_bytes'] / GIB:.1f} GiB source; sender {_mib(s['sender_rss_kib'])}, "
            f"receiver {_mib(s['receiver_rss_kib'])} MiB",
        )
    add("peak RSS, max(sender, receiver), loopback", rss, "<=", 200, "MiB")
    return out


def target_rows(targets: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            t["target"],
            f"{t['op']} {t['threshold']:g}{(' ' + t['unit']) if t['unit'] else ''}",
            "-" if t["value"] is None else f"{t['value']:.3f}",
            t["status"],
            t["detail"],
        ]
        for t in targets
    ]


TARGET_HEADERS = ["target", "goal", "measured", "result", "detail"]


def describe_input(name: str, inp: dict[str, Any]) -> str:
    rec, size = inp["info"]["recipe"], f"{inp['size_bytes'] / MIB:.0f} MiB"
    if rec["kind"] != "realistic":
        return f"- **{name}** ({size}): {rec['generator']}, seed {rec['seed']}."
    c = inp["info"]["composition"]
    roots = ", ".join(rec["compressible_source_roots"])
    exts = ", ".join(list(c["compressible_top_extensions_by_bytes"])[:6])
    return (
        f"- **{name}** ({size}): ext4 image, `{rec['mkfs']}`."
        f" Files fill {c['file_bytes_fraction_of_image']:.0%} of it:"
        f" {c['compressible_bytes'] / MIB:.0f} MiB in {c['compressible_files']} copies of real"
        f" files (seeded shuffle of all regular files of at most"
        f" {rec['max_copied_file_bytes'] // MIB} MiB under {roots}; most bytes in {exts}) and"
        f" {c['incompressible_bytes'] / MIB:.0f} MiB in {c['incompressible_files']}"
        " pseudo-random files posing as media and archives. The rest is free space: zero"
        f" blocks, written, not sparse. Seed {rec['seed']}."
    )


def render_markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        f"Run {res['started']} on {m['nproc']} × {m['cpu_model']}, {m['memory']} RAM"
        f" ({m['mem_available_at_start']} available, load average"
        f" {' / '.join(map(str, m['loadavg_at_start']))} at start), {m['os']}, "
        f"kernel {m['kernel']}, Python {m['python']}; scratch on {m['scratch_fs']}.",
        "",
        "Tool versions: " + ", ".join(f"{k} {v}" for k, v in m["tools"].items()) + ".",
        "",
        "Command:",
        "",
        "```",
        res["command"],
        "```",
        "",
        "### Inputs",
        "",
    ]
    lines += [describe_input(name, inp) for name, inp in res["inputs"].items()]
    dropped = "yes" if res["caches_dropped_all"] else "**NO**"
    lines += [
        "",
        "### Method",
        "",
        f"- Page cache dropped before every run: {dropped}. Sources and targets are files in"
        f" the scratch directory; every target is compared with its source (`cmp`).",
        f"- Repeats per configuration: {res['repeat']}; tables show the median run (all wall"
        " times in brackets). Wall time: sender launch until both sides have exited (target"
        " complete and fsynced; baselines write with `dd ... conv=fsync`).",
        "- MB/s = source bytes / wall seconds, MB = 10^6 bytes.",
        "- Wire MiB (iface) = interface tx bytes during the run: the sender's veth on the link"
        " (data direction), `lo` in a private namespace on loopback (both directions).",
        f"- RSS = sum of peak RSS over a side's processes ({res['rss_method']});"
        " CPU = user+sys seconds summed over a side's processes.",
        "- Commands (each process runs as `ip netns exec NS /usr/bin/time -f %M ... CMD`):",
    ]
    seen: set[str] = set()
    for r in res["runs"]:
        if r["tool"] not in seen:
            seen.add(r["tool"])
            lines.append(f"- `{r['tool']}`: `{r['sender_cmd']}`  →  `{r['receiver_cmd']}`")
    if res["notes"]:
        lines += ["", "### Notes", ""] + [f"- {n}" for n in res["notes"]]
    lines.append("")
    for key, title in (
        ("loopback", LOOPBACK.title),
        ("link", LINK.title),
        ("rss", "peak RSS check (loopback)"),
    ):
        entries = [e for e in res["entries"] if e["setting"] == key]
        if entries:
            lines += [f"### {title}", "", table(SUMMARY_HEADERS, summary_rows(entries)), ""]
    lines += ["### Targets", "", table(TARGET_HEADERS, target_rows(res["targets"])), ""]
    if res["failures"]:
        lines += ["### FAILURES", ""] + [f"- {f}" for f in res["failures"]] + [""]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--size-gib",
        type=float,
        default=1.0,
        help="size of the realistic and random disks (default 1)",
    )
    ap.add_argument(
        "--rss-size-gib", type=float, default=4.0, help="size of the peak-RSS source (default 4)"
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 256 MiB disks, 1 GiB RSS source, 1 repeat;"
        " results go to the scratch dir unless --out is given",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs per configuration, median reported (default 3, quick 1)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results JSON (default docs/benchmarks-results.json;"
        " with --quick SCRATCH/quick-results.json)",
    )
    ap.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help="write the markdown report here (default: print it)",
    )
    ap.add_argument("--scratch", type=Path, default=Path("/var/tmp/p2pclone-bench"))
    ap.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter that runs p2pclone (default: this one)",
    )
    ap.add_argument(
        "--settings", default="loopback,link,rss", help="comma list of loopback, link, rss"
    )
    ap.add_argument(
        "--tools", default="p2pclone,cat-nc,dd-nc,zstd-nc", help="comma list of tools to run"
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="per-run timeout in seconds (default 60 + source size at 10 MB/s)",
    )
    ap.add_argument(
        "--sparse-baselines",
        action="store_true",
        help="baselines write with dd conv=sparse,fsync (skip zero blocks, as p2pclone does"
        " for a file target) instead of conv=fsync",
    )
    ap.add_argument("--seed", type=int, default=1)
    return ap.parse_args()


PLAN: dict[str, tuple[Network, tuple[str, ...], tuple[str, ...]]] = {
    # setting: (network, inputs, tools)
    "loopback": (LOOPBACK, ("realistic", "random"), ("p2pclone", "cat-nc", "zstd-nc")),
    "link": (LINK, ("realistic", "random"), ("p2pclone", "dd-nc", "zstd-nc")),
    "rss": (LOOPBACK, ("realistic-rss",), ("p2pclone",)),
}


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        print("bench/run.py needs root (network namespaces, tc, drop_caches)", file=sys.stderr)
        return 2
    size = int((0.25 if args.quick else args.size_gib) * GIB) // MIB * MIB
    rss_size = int((1.0 if args.quick else args.rss_size_gib) * GIB) // MIB * MIB
    repeat = args.repeat or (1 if args.quick else 3)
    out_path = args.out or (
        args.scratch / "quick-results.json" if args.quick else Path("docs/benchmarks-results.json")
    )
    settings = [s for s in args.settings.split(",") if s]
    wanted_tools = [t for t in args.tools.split(",") if t]
    scratch: Path = args.scratch.resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(scratch / "logs", ignore_errors=True)  # per-run stderr of this invocation only

    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    )
    tools = make_tools(args.python, args.sparse_baselines)
    unknown = [t for t in wanted_tools if t not in tools] + [s for s in settings if s not in PLAN]
    if unknown:
        print(f"unknown tool/setting: {unknown}", file=sys.stderr)
        return 2
    notes: list[str] = []
    failures: list[str] = []
    if "p2pclone" in wanted_tools:
        ok, detail = p2pclone_available(args.python, env)
        if not ok:
            wanted_tools.remove("p2pclone")
            msg = f"p2pclone is NOT runnable (`{args.python} -m p2pclone --help` failed): {detail}"
            failures.append(msg)
            print(f"!!! {msg}", file=sys.stderr)

    # inputs
    need_rss = "rss" in settings and "p2pclone" in wanted_tools
    inputs: dict[str, dict[str, Any]] = {}
    specs = [
        (
            "realistic",
            f"realistic-{size // MIB}M.img",
            mkdisk.build_realistic,
            mkdisk.realistic_recipe(size, args.seed),
        ),
        (
            "random",
            f"random-{size // MIB}M.img",
            mkdisk.build_random,
            mkdisk.random_recipe(size, args.seed),
        ),
    ]
    if need_rss:
        specs.append(
            (
                "realistic-rss",
                f"realistic-{rss_size // MIB}M.img",
                mkdisk.build_realistic,
                mkdisk.realistic_recipe(rss_size, args.seed),
            )
        )
    for name, fname, build, recipe in specs:
        path = scratch / fname
        inputs[name] = {
            "path": str(path),
            "size_bytes": recipe["size_bytes"],
            "info": build(path, recipe),
        }

    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    result: dict[str, Any] = {
        "schema": 1,
        "started": started,
        "command": shlex.join([sys.executable, *sys.argv]),
        "repeat": repeat,
        "machine": machine_info(args.python, env, scratch),
        "method": (__doc__ or "").split("Method\n------\n", 1)[-1].strip(),
        "inputs": inputs,
    }
    result["rss_method"] = (
        "GNU time %M per process (wrapper inside the namespace)"
        if USE_GNU_TIME
        else "os.wait4 ru_maxrss (UPPER BOUND: includes the harness's own peak)"
    )
    if not USE_GNU_TIME:
        notes.append(
            f"WARNING: {GNU_TIME} missing (apt-get install time);"
            " RSS figures are wait4 upper bounds"
        )
    load1 = result["machine"]["loadavg_at_start"][0]
    if load1 > 0.5:
        notes.append(
            f"WARNING: the machine was not idle (1-min load average {load1} at start);"
            " other processes competed for CPU, memory and disk"
        )
    if args.sparse_baselines:
        notes.append("baselines wrote with `dd conv=sparse,fsync` (zero blocks skipped)")
    if "tmpfs" in result["machine"]["scratch_fs"]:
        notes.append("WARNING: scratch directory is on tmpfs; targets are not written to a disk")

    def _on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _on_term)
    become_subreaper()
    runs: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    port = FIRST_PORT
    try:
        result["network"] = setup_netns()
        for setting in settings:
            net, input_names, tool_keys = PLAN[setting]
            keys = [k for k in tool_keys if k in wanted_tools]
            for inp in input_names:
                if inp not in inputs or not keys:
                    continue
                source = Path(inputs[inp]["path"])
                timeout = args.timeout or 60 + inputs[inp]["size_bytes"] / (10 * MB)
                n = 1 if setting == "rss" else repeat
                per_tool: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
                for rep in range(n):
                    for k in keys:  # interleave tools so drift affects all alike
                        tag = f"{setting}/{inp}/{k}#{rep + 1}"
                        print(f"[bench] {tag} ...", file=sys.stderr, end=" ", flush=True)
                        r = run_once(
                            tools[k],
                            net,
                            source,
                            scratch / "target.img",
                            port,
                            timeout,
                            env,
                            scratch / "logs" / f"{setting}-{inp}-{k}-{rep + 1}",
                        )
                        port += 1
                        r.update(setting=setting, input=inp, repeat_index=rep + 1)
                        runs.append(r)
                        per_tool[k].append(r)
                        if r["ok"]:
                            print(
                                f"{r['wall_seconds']:.2f} s, {r['throughput_MBps']:.1f} MB/s",
                                file=sys.stderr,
                            )
                        else:
                            msg = f"{tag}: {r['error']}"
                            failures.append(msg)
                            print(f"FAILED\n!!! {msg}", file=sys.stderr)
                            for side, text in r.get("stderr", {}).items():
                                if text:
                                    print(f"!!! {side} stderr: {text}", file=sys.stderr)
                for k in keys:
                    entries.append(
                        {
                            "setting": setting,
                            "network": net.key,
                            "input": inp,
                            "tool": k,
                            "tool_name": tools[k].name,
                            "source_bytes": inputs[inp]["size_bytes"],
                            "summary": summarize(per_tool[k]),
                        }
                    )
    except KeyboardInterrupt:
        failures.append("interrupted")
        print("\n!!! interrupted", file=sys.stderr)
    finally:
        teardown_netns()

    result.update(
        runs=runs,
        entries=entries,
        failures=failures,
        caches_dropped_all=bool(runs) and all(r["caches_dropped"] for r in runs),
    )
    if runs and not result["caches_dropped_all"]:
        notes.append(
            "WARNING: dropping the page cache failed for some runs; sources may have been read warm"
        )
    result["targets"] = evaluate_targets(entries)
    result["notes"] = notes

    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    md = render_markdown(result)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(md)

    for key, title in (
        ("loopback", LOOPBACK.title),
        ("link", LINK.title),
        ("rss", "peak RSS check"),
    ):
        sel = [e for e in entries if e["setting"] == key]
        if sel:
            print(f"\n== {title}\n{table(SUMMARY_HEADERS, summary_rows(sel), markdown=False)}")
    print(f"\n== targets\n{table(TARGET_HEADERS, target_rows(result['targets']), markdown=False)}")
    if failures:
        print("\n!!! FAILURES:\n" + "\n".join(f"!!! {f}" for f in failures))
    if not args.markdown:
        print("\n" + md)
    print(f"\nresults: {out_path}" + (f", markdown: {args.markdown}" if args.markdown else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
