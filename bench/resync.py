"""Benchmark resume and delta re-sync (issue targets for "never send twice").

Usage (as root, from the repository root; `./dev bench` runs it after run.py)::

    .venv/bin/python bench/resync.py [--size-mib 1024] [--markdown FILE] [--json FILE]

Three measurements on the benchmark's realistic ext4 image (bench/mkdisk.py):

1. **Resume after a cut.** A full clone over loopback TCP measures the full run's
   wire bytes W.  Then, for X in 30%, 60%, 90%, a fresh target is cloned through a
   relay that resets both connections after X*W bytes from the sender; the same
   commands are run again, and the resumed run's wire bytes R are compared with the
   target R <= (1 - X + 0.05) * W.
2. **Delta after a ~1% change through the filesystem.** The image is cloned; then
   the source image is loop-mounted and changed through ext4 (new files, files
   rewritten in place, files deleted: about 1% of the disk in all); then
   ``receive --delta`` brings the target up to date.  Target: wire bytes <= 3% of
   the disk, and the target equals the changed source.
3. **Delta scan speed.** With a cold cache, the receiver's scan (whole-chunk and
   sub-block BLAKE3 of every chunk, exactly the code `receive --delta` runs) is
   timed against a plain sequential read of the same file (`dd bs=1M` to
   /dev/null).  Target: scan speed >= 80% of read speed.

Every target is compared with its source; a difference is a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mkdisk  # noqa: E402
from common import drop_caches as _drop_caches  # noqa: E402
from common import identical  # noqa: E402


def drop_caches() -> None:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):  # not root: cache stays
        _drop_caches()


MIB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CuttingRelay(threading.Thread):
    """Forwards sender -> receiver until ``budget`` bytes, then resets both sides."""

    def __init__(self, port: int, budget: int) -> None:
        super().__init__(daemon=True)
        self.port, self.budget = port, budget
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"tcp://127.0.0.1:{self.server.getsockname()[1]}"

    def run(self) -> None:
        a, _ = self.server.accept()
        b = socket.create_connection(("127.0.0.1", self.port))

        def back() -> None:
            try:
                while data := b.recv(65536):
                    a.sendall(data)
            except OSError:
                pass

        threading.Thread(target=back, daemon=True).start()
        left = self.budget
        try:
            while left > 0 and (data := a.recv(min(65536, left))):
                b.sendall(data)
                left -= len(data)
        except OSError:
            pass
        time.sleep(0.3)  # the receiver writes and journals what arrived
        for s in (a, b):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            s.close()
        self.server.close()


def clone(
    python: str,
    source: Path,
    target: Path,
    state: Path,
    *,
    cut: int | None = None,
    delta: bool = False,
) -> dict[str, Any]:
    """One CLI clone over loopback; returns the sender's last JSON line (or an error)."""
    env = dict(os.environ, P2PCLONE_STATE_DIR=str(state))
    port = free_port()
    rx_args = [
        python,
        "-m",
        "p2pclone",
        "receive",
        str(target),
        f"tcp://127.0.0.1:{port}",
        "--code",
        "9-bench-resync",
        "--yes",
        "--json",
    ] + (["--delta"] if delta else [])
    rx = subprocess.Popen(
        rx_args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert rx.stdout is not None
    rx.stdout.readline()  # listening
    url = f"tcp://127.0.0.1:{port}"
    if cut is not None:
        relay = CuttingRelay(port, cut)
        relay.start()
        url = relay.url
    started = time.perf_counter()
    tx = subprocess.run(
        [python, "-m", "p2pclone", "send", str(source), url, "--code", "9-bench-resync", "--json"],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )
    rx.communicate(timeout=600)
    last = json.loads(tx.stdout.strip().splitlines()[-1]) if tx.stdout.strip() else {}
    last["exit"] = tx.returncode
    last["wall"] = time.perf_counter() - started
    return last


def bench_resume(python: str, image: Path, work: Path) -> list[dict[str, Any]]:
    full = clone(python, image, work / "full.img", work / "state-full")
    assert full.get("event") == "done", full
    rows = []
    for x in (0.3, 0.6, 0.9):
        target, state = work / f"cut{x}.img", work / f"state-{x}"
        first = clone(python, image, target, state, cut=int(full["wire_bytes"] * x))
        again = clone(python, image, target, state)
        ok = again.get("event") == "done" and identical(image, target)
        ratio = again.get("wire_bytes", 0) / full["wire_bytes"]
        rows.append(
            {
                "cut": x,
                "first_exit": first["exit"],
                "resumed_wire": again.get("wire_bytes"),
                "full_wire": full["wire_bytes"],
                "ratio": ratio,
                "goal": 1 - x + 0.05,
                "pass": ok and ratio <= 1 - x + 0.05,
                "identical": ok,
            }
        )
        target.unlink(missing_ok=True)
    (work / "full.img").unlink(missing_ok=True)
    return rows


def change_filesystem(image: Path, fraction: float, seed: int) -> dict[str, int]:
    """Loop-mount ``image`` and change ~``fraction`` of it through ext4."""
    rng = random.Random(seed)
    size = image.stat().st_size
    budget = int(size * fraction)
    mnt = Path(tempfile.mkdtemp(prefix="p2pclone-resync-"))
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    stats = {"new": 0, "rewritten": 0, "deleted": 0}
    try:
        files = sorted(p for p in mnt.rglob("*") if p.is_file() and p.stat().st_size > 0)
        rng.shuffle(files)
        # 40%: new files (half compressible text, half random)
        new_dir = mnt / "home/user/new"
        new_dir.mkdir(parents=True, exist_ok=True)
        n = 0
        while stats["new"] < budget * 0.4:
            data = (
                rng.randbytes(256 * 1024)
                if n % 2
                else (b"log line %d\n" % rng.randrange(10**9)) * 20000
            )
            (new_dir / f"file-{n}.dat").write_bytes(data)
            stats["new"] += len(data)
            n += 1
        # 40%: existing files rewritten in place, a 4 KiB block here and there
        for f in files:
            if stats["rewritten"] >= budget * 0.4:
                break
            length = f.stat().st_size
            with open(f, "r+b") as fh:
                for _ in range(max(1, length // (256 * 1024))):
                    off = rng.randrange(max(1, length - 4096))
                    fh.seek(off)
                    fh.write(rng.randbytes(min(4096, length)))
                    stats["rewritten"] += 4096
        # 20%: files deleted (their blocks keep their old content on disk)
        for f in reversed(files):
            if stats["deleted"] >= budget * 0.2:
                break
            stats["deleted"] += f.stat().st_size
            f.unlink()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
        mnt.rmdir()
    return stats


def bench_delta(python: str, image: Path, work: Path) -> dict[str, Any]:
    source, target = work / "delta-src.img", work / "delta-dst.img"
    shutil.copyfile(image, source)
    first = clone(python, source, target, work / "state-delta")
    assert first.get("event") == "done", first
    changes = change_filesystem(source, 0.01, seed=5)
    drop_caches()
    again = clone(python, source, target, work / "state-delta", delta=True)
    ok = again.get("event") == "done" and identical(source, target)
    size = source.stat().st_size
    result = {
        "changes": changes,
        "wire": again.get("wire_bytes"),
        "size": size,
        "ratio": again.get("wire_bytes", 0) / size,
        "goal": 0.03,
        "same_chunks": again.get("same_chunks"),
        "chunks": again.get("chunks"),
        "seconds": again.get("seconds"),
        "identical": ok,
    }
    result["pass"] = ok and result["ratio"] <= 0.03
    source.unlink()
    target.unlink()
    return result


def bench_scan(image: Path) -> dict[str, Any]:
    import trio

    from p2pclone.disks import Target
    from p2pclone.pipeline import default_threads
    from p2pclone.protocol import Plan
    from p2pclone.receiver.data import DELTA_BATCH, DataState
    from p2pclone.receiver.verify import NullLog

    size = image.stat().st_size
    drop_caches()
    t = time.perf_counter()
    subprocess.run(["dd", f"if={image}", "of=/dev/null", "bs=1M", "status=none"], check=True)
    read_s = time.perf_counter() - t
    drop_caches()
    target = Target.open(str(image))
    target.fd = os.open(image, os.O_RDONLY)
    plan = Plan(source_size=size, chunk_size=MIB)
    # The receiver's own scan code (`receive --delta`), without a peer to send to.
    state = DataState(
        None,
        target,
        plan,
        None,
        NullLog(),
        default_threads(),  # type: ignore[arg-type]
        lambda _: None,
    )

    async def scan() -> None:
        for first in range(0, plan.chunk_count, DELTA_BATCH):
            await state._hash_batch(
                range(first, min(first + DELTA_BATCH, plan.chunk_count)), subs=True
            )

    t = time.perf_counter()
    trio.run(scan)
    scan_s = time.perf_counter() - t
    target.close()
    ratio = read_s / scan_s
    return {
        "read_MBps": size / read_s / 1e6,
        "scan_MBps": size / scan_s / 1e6,
        "ratio": ratio,
        "goal": 0.8,
        "pass": ratio >= 0.8,
    }


def render(res: dict[str, Any]) -> str:
    lines = [
        f"Command: `{res['command']}`",
        "",
        "| resume after a cut at | resumed wire / full wire | goal | result |",
        "|---|---|---|---|",
    ]
    for r in res["resume"]:
        lines.append(
            f"| {r['cut']:.0%} | {r['ratio']:.3f} | <= {r['goal']:.2f} | "
            f"{'PASS' if r['pass'] else 'FAIL'} |"
        )
    d = res["delta"]
    lines += [
        "",
        "| delta after ~1% change through ext4 | value |",
        "|---|---|",
        f"| changes (bytes) | new {d['changes']['new']:,}, rewritten "
        f"{d['changes']['rewritten']:,}, deleted {d['changes']['deleted']:,} |",
        f"| chunks already there | {d['same_chunks']} of {d['chunks']} |",
        f"| wire bytes / disk size | {d['ratio']:.4f} (goal <= 0.03): "
        f"{'PASS' if d['pass'] else 'FAIL'} |",
        f"| target identical to changed source | {d['identical']} |",
    ]
    s = res["scan"]
    lines += [
        "",
        "| delta scan (cold cache) | MB/s |",
        "|---|---|",
        f"| sequential read (`dd bs=1M`) | {s['read_MBps']:.0f} |",
        f"| receiver's delta scan | {s['scan_MBps']:.0f} |",
        f"| ratio (goal >= 0.8) | {s['ratio']:.2f}: {'PASS' if s['pass'] else 'FAIL'} |",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--scratch", default="/var/tmp/p2pclone-bench")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--markdown", help="write a markdown table here")
    args = ap.parse_args()
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    image = scratch / f"realistic-{args.size_mib}M.img"
    recipe = mkdisk.realistic_recipe(args.size_mib * MIB, 1)
    if mkdisk.load_if_current(image, recipe) is None:
        mkdisk.build_realistic(image, recipe)
    work = Path(tempfile.mkdtemp(prefix="resync-", dir=scratch))
    try:
        res = {
            "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "resume": bench_resume(args.python, image, work),
            "delta": bench_delta(args.python, image, work),
            "scan": bench_scan(image),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    md = render(res)
    print(md)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(md + "\n")
    ok = all(r["pass"] for r in res["resume"]) and res["delta"]["pass"] and res["scan"]["pass"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
