"""Benchmark clones over a serial line: p2pclone against ZMODEM (lrzsz), side by side.

Usage (from the repository root)::

    .venv/bin/python bench/serial.py [--quick] [--out docs/benchmarks-serial.json] [--markdown FILE]

Method
------
A "line" is two pty pairs joined master to master by a relay thread in this process
that plays the UART: in each direction it takes bytes from one pty no faster than the
line rate (``baud / 10`` bytes per second: 8N1 is ten bit times a byte) and hands them
to the other, so the writer's bytes queue in its pty as they would in a UART's
transmit buffer.  A noisy line flips one random bit in a byte with probability
``--ber`` (default 1e-5: one bit error per 100 000 bytes), in both directions.  The
relay counts the bytes it carries each way: those are the *line bytes*.

Each run starts the receiver, then the sender, as separate processes on the two pty
slaves; wall time runs from launching the sender until both have exited (the target
is complete and, for p2pclone, fsynced).  Every target is compared with its source.

* p2pclone: ``python -m p2pclone receive TARGET serial://PTY?baud=N --code C --yes --json``
  and ``python -m p2pclone send SOURCE serial://PTY?baud=N --code C --json``.
* ZMODEM: ``rz -b -y`` and ``sz -b -8 SOURCE`` (lrzsz: binary, 8 KiB subpackets, CRC-32)
  with the pty as stdin and stdout.  It sends the raw image, zeros included.  Its wall
  time ends when ``sz`` exits (rz has acknowledged the end of the session; the file is
  complete and closed, though not fsynced); see ``run_zmodem`` for why not at rz's exit.

Inputs (bench/mkdisk.py, cached in the scratch directory): a small *realistic* ext4
image (files copied from this machine and random "media", 55 % full) and *random*
bytes (incompressible).  Reported per run: wall time, effective throughput (source
bytes / wall time) as a multiple of the line rate, line bytes in the data direction,
and *link efficiency* = source bytes / line bytes in the data direction (on random
data nothing can be saved, so this is the share of the line that carried payload).

Targets (issue 5): efficiency >= 0.95 on random data over a clean line; realistic disk
>= 2.5x the line rate at 115200 and 921600 baud; with one bit error per 100 000 bytes,
throughput >= 0.8x the clean line's.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tty
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mkdisk  # noqa: E402
from common import identical, publish  # noqa: E402

KIB = 1024
MIB = 1 << 20
CODE = "5-serial-bench"


class Line(threading.Thread):
    """A serial line between two ptys, paced at baud/10 bytes/s, optionally noisy."""

    def __init__(self, baud: int, ber: float = 0.0, seed: int = 1) -> None:
        super().__init__(daemon=True)
        self.rate = baud / 10
        self.ber = ber
        self.rng = random.Random(seed)
        self.pairs = [os.openpty() for _ in range(2)]
        for master, slave in self.pairs:
            tty.setraw(master)
            tty.setraw(slave)
            os.set_blocking(master, False)
        self.paths = tuple(os.ttyname(slave) for _, slave in self.pairs)
        self.carried = [0, 0]  # bytes carried a->b, b->a
        self.flips = [0, 0]
        self._halt = threading.Event()
        # Up to 4 ms of line time may accumulate between two passes of the loop, so a
        # late wake-up does not cost throughput; a UART's FIFO is of that order.
        self.burst = max(16.0, self.rate * 0.004)

    def _gap(self) -> int:
        return int(self.rng.expovariate(self.ber)) if self.ber else 1 << 62

    def run(self) -> None:
        a, b = self.pairs[0][0], self.pairs[1][0]
        dirs = [(a, b), (b, a)]
        tokens = [0.0, 0.0]
        pending = [bytearray(), bytearray()]
        next_flip = [self._gap(), self._gap()]
        last = time.monotonic()
        while not self._halt.is_set():
            select.select([], [], [], 0.001)
            now = time.monotonic()
            for i, (src, dst) in enumerate(dirs):
                tokens[i] = min(self.burst, tokens[i] + self.rate * (now - last))
                if not pending[i] and tokens[i] >= 1:
                    try:
                        data = bytearray(os.read(src, int(tokens[i])))
                    except (BlockingIOError, OSError):  # EIO: nobody on the slave yet
                        data = bytearray()
                    tokens[i] -= len(data)
                    while next_flip[i] < len(data):
                        data[next_flip[i]] ^= 1 << self.rng.randrange(8)
                        self.flips[i] += 1
                        next_flip[i] += 1 + self._gap()
                    next_flip[i] -= len(data)
                    self.carried[i] += len(data)
                    pending[i] += data
                if pending[i]:
                    with contextlib.suppress(BlockingIOError, OSError):
                        del pending[i][: os.write(dst, pending[i])]
            last = now

    def stop(self) -> None:
        self._halt.set()
        self.join()
        for master, slave in self.pairs:
            os.close(master)
            os.close(slave)


def run_p2pclone(python: str, source: Path, work: Path, line: Line, baud: int) -> dict[str, Any]:
    target = work / "target.img"
    env = dict(os.environ, P2PCLONE_STATE_DIR=str(work / "state"))
    a, b = line.paths
    rx = subprocess.Popen(
        [python, "-m", "p2pclone", "receive", str(target), f"serial://{b}?baud={baud}"]
        + ["--code", CODE, "--yes", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert rx.stdout is not None
    rx.stdout.readline()  # listening
    started = time.perf_counter()
    tx = subprocess.run(
        [python, "-m", "p2pclone", "send", str(source), f"serial://{a}?baud={baud}"]
        + ["--code", CODE, "--json"],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        timeout=3600,
    )
    rx_out, rx_err = rx.communicate(timeout=120)
    wall = time.perf_counter() - started
    done = json.loads(tx.stdout.strip().splitlines()[-1]) if tx.stdout.strip() else {}
    return {
        "wall_s": wall,
        "exit": [tx.returncode, rx.returncode],
        "error": (tx.stderr + rx_err).strip()[-500:] if tx.returncode or rx.returncode else "",
        "identical": identical(source, target),
        "p2pclone_wire_bytes": done.get("wire_bytes"),
    }


def run_zmodem(source: Path, work: Path, line: Line) -> dict[str, Any]:
    out = work / "zmodem"
    out.mkdir()
    fds = [os.open(p, os.O_RDWR | os.O_NOCTTY) for p in line.paths]
    try:
        rx = subprocess.Popen(
            ["rz", "-b", "-y", "-q"], stdin=fds[1], stdout=fds[1], stderr=subprocess.PIPE, cwd=out
        )
        started = time.perf_counter()
        tx = subprocess.run(
            ["sz", "-b", "-8", "-q", str(source)],
            stdin=fds[0],
            stdout=fds[0],
            stderr=subprocess.PIPE,
            timeout=3600,
        )
        wall = time.perf_counter() - started
        # sz exits once rz has acknowledged the end of the session (ZFIN), so the file
        # is complete and closed.  rz then waits for sz's last "OO", which a pty loses
        # when sz resets its terminal on exit (a UART would drain it first): rz would
        # sit out its 30 s timeout, which is not the transfer's time.
        try:
            _, rx_err = rx.communicate(timeout=3)
        except subprocess.TimeoutExpired:
            rx.terminate()
            _, rx_err = rx.communicate(timeout=10)
            rx.returncode = 0
    finally:
        for fd in fds:
            os.close(fd)
    error = (tx.stderr + rx_err).decode(errors="replace").strip()[-500:]
    return {
        "wall_s": wall,
        "exit": [tx.returncode, rx.returncode],
        "error": error if tx.returncode or rx.returncode else "",
        "identical": identical(source, out / source.name),
    }


def one_run(
    tool: str, python: str, source: Path, baud: int, ber: float, scratch: Path, seed: int
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="serial-", dir=scratch))
    line = Line(baud, ber, seed)
    line.start()
    try:
        if tool == "p2pclone":
            res = run_p2pclone(python, source, work, line, baud)
        else:
            res = run_zmodem(source, work, line)
    finally:
        line.stop()
        shutil.rmtree(work, ignore_errors=True)
    size = source.stat().st_size
    rate = baud / 10
    res.update(
        tool=tool,
        baud=baud,
        ber=ber,
        source=source.name,
        source_bytes=size,
        line_bytes=line.carried[0],
        line_bytes_back=line.carried[1],
        bit_flips=sum(line.flips),
        efficiency=size / line.carried[0] if line.carried[0] else None,
        throughput_x_line=size / res["wall_s"] / rate,
    )
    ok = res["identical"] and res["exit"] == [0, 0]
    res["ok"] = ok
    print(
        f"[serial] {tool:8} {baud:>6} baud ber={ber:g} {source.name}: "
        f"{res['wall_s']:.1f} s, {res['throughput_x_line']:.2f}x line rate, "
        f"efficiency {res['efficiency'] or 0:.3f}, flips {res['bit_flips']}"
        + ("" if ok else f"  FAILED {res['exit']} {res['error']}"),
        file=sys.stderr,
        flush=True,
    )
    return res


def evaluate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def find(tool: str, baud: int, kind: str, noisy: bool) -> dict[str, Any] | None:
        for r in runs:
            if (
                r["tool"] == tool
                and r["baud"] == baud
                and r["source"].startswith(kind)
                and bool(r["ber"]) == noisy
            ):
                return r
        return None

    out = []
    for baud in sorted({r["baud"] for r in runs}):
        clean = find("p2pclone", baud, "random", False)
        noisy = find("p2pclone", baud, "random", True)
        real = find("p2pclone", baud, "realistic", False)
        if clean:
            out.append(
                {
                    "target": f"{baud} baud, random, clean line: link efficiency >= 0.95",
                    "value": clean["efficiency"],
                    "pass": clean["ok"] and clean["efficiency"] >= 0.95,
                }
            )
        if real:
            out.append(
                {
                    "target": f"{baud} baud, realistic disk: throughput >= 2.5x line rate",
                    "value": real["throughput_x_line"],
                    "pass": real["ok"] and real["throughput_x_line"] >= 2.5,
                }
            )
        if clean and noisy:
            ratio = noisy["throughput_x_line"] / clean["throughput_x_line"]
            out.append(
                {
                    "target": f"{baud} baud, 1 bit error per 1e5 bytes: throughput >= 0.8x clean",
                    "value": ratio,
                    "pass": noisy["ok"] and ratio >= 0.8,
                }
            )
    return out


def render(res: dict[str, Any]) -> str:
    lines = [
        f"Serial line benchmark, {res['when']} (`{res['command']}`)",
        "",
        "| tool | baud | line | input | wall s | x line rate | line bytes | efficiency"
        " | identical |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        noise = f"{r['bit_flips']} bit flips" if r["ber"] else "clean"
        lines.append(
            f"| {r['tool']} | {r['baud']} | {noise} | {r['source']} | {r['wall_s']:.1f} "
            f"| {r['throughput_x_line']:.2f} | {r['line_bytes']:,} | {r['efficiency']:.3f} "
            f"| {'yes' if r['ok'] else 'NO'} |"
        )
    lines += ["", "| target | value | |", "|---|---|---|"]
    for t in res["targets"]:
        lines.append(f"| {t['target']} | {t['value']:.3f} | {'PASS' if t['pass'] else 'FAIL'} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small inputs, 921600 baud only")
    ap.add_argument("--ber", type=float, default=1e-5, help="bit errors per byte on noisy runs")
    ap.add_argument("--bauds", default="115200,921600")
    ap.add_argument("--tools", default="p2pclone,zmodem")
    ap.add_argument("--scratch", type=Path, default=Path("/var/tmp/p2pclone-bench"))
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--markdown", type=Path, help="write the tables as Markdown here")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    python = str(Path(".venv/bin/python").absolute()) if Path(".venv").is_dir() else sys.executable
    tools = args.tools.split(",")
    if "zmodem" in tools and not (shutil.which("sz") and shutil.which("rz")):
        print("[serial] sz/rz not found (apt install lrzsz): ZMODEM skipped", file=sys.stderr)
        tools.remove("zmodem")
    bauds = [921600] if args.quick else [int(b) for b in args.bauds.split(",")]
    # Sizes keep each run near a minute of line time.
    sizes = {
        115200: {"random": 512 * KIB, "realistic": 4 * MIB},
        921600: {"random": 4 * MIB, "realistic": 16 * MIB},
    }
    args.scratch.mkdir(parents=True, exist_ok=True)
    runs = []
    for baud in bauds:
        sz = sizes.get(baud, sizes[921600])
        if args.quick:
            sz = {"random": 256 * KIB, "realistic": 4 * MIB}
        real = args.scratch / f"realistic-{sz['realistic'] // KIB}K.img"
        mkdisk.build_realistic(real, mkdisk.realistic_recipe(sz["realistic"], args.seed))
        rand = args.scratch / f"random-{sz['random'] // KIB}K.img"
        mkdisk.build_random(rand, mkdisk.random_recipe(sz["random"], args.seed))
        for source, ber in ((rand, 0.0), (rand, args.ber), (real, 0.0)):
            for tool in tools:
                runs.append(one_run(tool, python, source, baud, ber, args.scratch, args.seed))
    res = {
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python bench/serial.py" + (" --quick" if args.quick else ""),
        "runs": runs,
    }
    res["targets"] = evaluate(runs)
    text = render(res)
    publish(res, text, args.out, args.markdown)
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
