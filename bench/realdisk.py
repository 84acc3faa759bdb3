"""Benchmark cloning a disk built like a real machine's: p2pclone beside Clonezilla's
pipeline, ``dd | nc``, ``partclone -b`` and ``bmaptool copy``, in one run.

    .venv/bin/python bench/realdisk.py [--size-mib 2048] [--repeat 3] [--out F.json] [--markdown F]

The disk (cached in the scratch directory, rebuilt when the recipe changes): GPT; an
EFI system partition (FAT32, 256 MiB), an NTFS partition (a third of the rest) and an
ext4 root (the rest).  Every byte is first pseudo-random -- the deleted data free space
holds on a used machine -- then each filesystem is made without discarding (mkfs.fat,
``mkntfs -Q``, ``mkfs.ext4 -E nodiscard``) and filled to ``--fill`` (default 32 %: with the
filesystems' own metadata, partclone then counts about 40 % of the disk in use) with
bench/mkdisk.py's realistic mix (copies of this machine's files, and incompressible
"media"): ext4 by ``mkfs.ext4 -d``, NTFS through ntfs-3g, FAT with ``mcopy``.

Over the 1 Gbit link (bench/run.py's two namespaces, veth shaped by tbf 1gbit), page
cache dropped before each run, wall time from the sender's start until both sides have
exited and ``sync`` returned:

* p2pclone:   ``p2pclone send DISK tcp://B`` -> ``p2pclone receive TARGET tcp:// --yes``
* Clonezilla: its pipeline per partition, one after the other, plus the first and last
  MiB for the table: ``partclone.<fs> -c -s PART -o - | zstd -1 -T0 | nc`` ->
  ``nc -l | zstd -d | partclone.<fs> -r -s - -o TARGET-PART``
* ``dd if=DISK bs=1M | nc`` -> ``nc -l | dd of=TARGET bs=1M conv=fsync``

On this machine (loop devices over the files): ``p2pclone clone DISK TARGET``,
``partclone.<fs> -b`` per partition (plus the table), and ``bmaptool copy`` with a bmap
made beforehand by ``bmaptool create`` (not timed).  "Used bytes" are partclone's own
count (its ``-D`` domain maps), the independent measure of what the filesystems use.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mkdisk  # noqa: E402
from common import drop_caches, publish  # noqa: E402
from run import ADDR_B, NS_A, NS_B, VETH_A, setup_netns, teardown_netns, tx_bytes  # noqa: E402

MIB = 1 << 20
RECIPE_VERSION = 1
CODE = "7-bench-real-disk"


def sh(*args: str | Path, **kw: Any) -> str:
    return subprocess.run(
        [str(a) for a in args], check=True, capture_output=True, text=True, **kw
    ).stdout


@contextlib.contextmanager
def loop(path: Path, offset: int = 0, size: int = 0, read_only: bool = False):
    args = ["losetup", "--find", "--show", "-o", str(offset)]
    if size:
        args += ["--sizelimit", str(size)]
    dev = sh(*args, *(["-r"] if read_only else []), path).strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def partitions(disk: Path) -> list[tuple[int, int, str]]:
    """(start, size, filesystem) of each partition, from sfdisk's dump."""
    dump = json.loads(sh("sfdisk", "--json", disk))["partitiontable"]
    kinds = ["fat32", "ntfs", "ext4"]
    return [(p["start"] * 512, p["size"] * 512, kinds[k]) for k, p in enumerate(dump["partitions"])]


def build(disk: Path, size: int, fill: float, seed: int) -> dict[str, Any]:
    recipe = {"version": RECIPE_VERSION, "size": size, "fill": fill, "seed": seed}
    side = disk.with_suffix(".json")
    if disk.exists() and side.exists() and json.loads(side.read_text())["recipe"] == recipe:
        return json.loads(side.read_text())
    print(f"[realdisk] building {disk} ({size >> 20} MiB)", file=sys.stderr)
    rng = random.Random(seed)
    with open(disk, "wb") as f:
        for _ in range(size // (16 * MIB)):
            f.write(rng.randbytes(16 * MIB))
    rest = (size - 256 * MIB - 4 * MIB) // MIB
    sh("sgdisk", "-n", "1:0:+256M", "-t", "1:ef00", "-n", f"2:0:+{rest // 3}M", "-t", "2:0700",
       "-n", "3:0:0", "-t", "3:8300", disk)  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="realdisk-", dir=disk.parent))
    try:
        for k, (start, length, fs) in enumerate(partitions(disk)):
            tree = work / f"tree{k}"
            tree.mkdir()
            r = mkdisk.realistic_recipe(length, seed + k, fill=fill)
            mkdisk._populate_tree(tree, r, disk.parent)
            with loop(disk, start, length) as dev:
                _make_fs(fs, dev, tree, work, f"{disk}@@{start}")
            shutil.rmtree(tree)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info = {"recipe": recipe, "partitions": partitions(disk)}
    side.write_text(json.dumps(info))
    return info


def _make_fs(fs: str, dev: str, tree: Path, work: Path, at: str) -> None:
    """``at``: the partition as mtools names it (``DISK@@OFFSET``): mcopy cannot use a
    loop device with an offset (it asks it for a geometry and fails)."""
    if fs == "ext4":
        sh("mkfs.ext4", "-q", "-F", "-E", "nodiscard", "-d", tree, dev)
    elif fs == "fat32":
        sh("mkfs.fat", "-F", "32", dev)
        env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
        for item in tree.iterdir():  # exit 1: names that clash on FAT were overwritten
            done = subprocess.run(["mcopy", "-s", "-D", "oO", "-i", at, str(item), "::/"],
                                  env=env, capture_output=True, text=True)  # fmt: skip
            if done.returncode not in (0, 1):
                raise RuntimeError(f"mcopy failed: {done.stderr}")
    else:
        sh("mkntfs", "-Q", "-F", "-q", dev)
        mnt = work / "mnt"
        mnt.mkdir(exist_ok=True)
        sh("ntfs-3g", dev, mnt)
        try:
            sh("cp", "-r", f"{tree}/.", mnt)
        finally:
            sh("umount", mnt)


def used_bytes(disk: Path, parts: list[tuple[int, int, str]], work: Path) -> int:
    total = 0
    for start, length, fs in parts:
        with loop(disk, start, length, read_only=True) as dev:
            out = work / "domain"
            out.unlink(missing_ok=True)
            kind = "fat" if fs == "fat32" else fs
            sh(f"partclone.{kind}", "-D", "-s", dev, "-o", out, "-L", os.devnull)
            for line in out.read_text().splitlines():
                cols = line.split()
                if len(cols) == 3 and not line.startswith("#") and cols[2] == "+":
                    total += int(cols[1], 16)
    return total


def timed(procs_start) -> float:
    """Start the processes (``procs_start()`` returns them), wait for all, sync."""
    t0 = time.monotonic()
    procs = procs_start()
    for p in procs:
        if p.wait(600) != 0:
            raise RuntimeError(f"{p.args!r} failed: {p.stderr.read() if p.stderr else ''}")
    os.sync()
    return time.monotonic() - t0


def ns(name: str, cmd: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["ip", "netns", "exec", name, "sh", "-c", cmd],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def run_p2pclone(python: str, disk: Path, target: Path, port: int) -> dict[str, Any]:
    target.unlink(missing_ok=True)
    env = f"P2PCLONE_CODE={CODE} P2PCLONE_STATE_DIR={target.parent}/state"
    out: dict[str, Any] = {}

    def start() -> list[subprocess.Popen[bytes]]:
        rx = ns(NS_B, f"{env} {python} -m p2pclone receive {target} tcp://{ADDR_B}:{port} --yes")
        while subprocess.run(["ip", "netns", "exec", NS_B, "ss", "-ltnH", f"sport = :{port}"],
                             capture_output=True, text=True).stdout.strip() == "":  # fmt: skip
            time.sleep(0.05)
        out["tx"] = ns(NS_A, f"{env} {python} -m p2pclone send {disk} tcp://{ADDR_B}:{port} --json")
        return [out["tx"], rx]

    before = tx_bytes(NS_A, VETH_A)
    wall = timed(start)
    lines = [json.loads(x) for x in out["tx"].stdout.read().decode().splitlines()]
    mapped = next(x for x in lines if x["event"] == "map")
    return {"wall": wall, "wire": tx_bytes(NS_A, VETH_A) - before, "scan": mapped["seconds"]}


def run_clonezilla(disk: Path, target: Path, parts: list, port: int) -> dict[str, Any]:
    with open(target, "ab") as t:  # the target's partitions must lie inside it
        t.truncate(disk.stat().st_size)
    before = tx_bytes(NS_A, VETH_A)
    wall = 0.0
    size = disk.stat().st_size
    for start in (0, size - MIB):  # the table: its first and last MiB
        skip = start // MIB

        def table(skip: int = skip) -> list[subprocess.Popen[bytes]]:
            rx = ns(NS_B, f"nc -l {ADDR_B} {port} | dd of={target} bs=1M seek={skip} "
                          "conv=notrunc,fsync status=none")  # fmt: skip
            time.sleep(0.2)
            return [ns(NS_A, f"dd if={disk} bs=1M skip={skip} count=1 status=none | "
                             f"nc -N {ADDR_B} {port}"), rx]  # fmt: skip

        wall += timed(table)
    for start, length, fs in parts:
        kind = "fat" if fs == "fat32" else fs
        with loop(disk, start, length, read_only=True) as src, loop(target, start, length) as dst:

            def part(src: str = src, dst: str = dst, kind: str = kind) -> list:
                rx = ns(NS_B, f"nc -l {ADDR_B} {port} | zstd -d -q | partclone.{kind} -r -s - "
                              f"-o {dst} -L /dev/null -q")  # fmt: skip
                time.sleep(0.2)
                return [ns(NS_A, f"partclone.{kind} -c -s {src} -o - -L /dev/null -q | "
                                 f"zstd -1 -T0 -q | nc -N {ADDR_B} {port}"), rx]  # fmt: skip

            wall += timed(part)
    return {"wall": wall, "wire": tx_bytes(NS_A, VETH_A) - before}


def run_dd(disk: Path, target: Path, port: int) -> dict[str, Any]:
    before = tx_bytes(NS_A, VETH_A)

    def start() -> list[subprocess.Popen[bytes]]:
        rx = ns(NS_B, f"nc -l {ADDR_B} {port} | dd of={target} bs=1M iflag=fullblock "
                      "conv=fsync status=none")  # fmt: skip
        time.sleep(0.2)
        return [ns(NS_A, f"dd if={disk} bs=1M status=none | nc -N {ADDR_B} {port}"), rx]

    return {"wall": timed(start), "wire": tx_bytes(NS_A, VETH_A) - before}


def local_runs(python: str, disk: Path, target: Path, parts: list, bmap: Path) -> dict[str, float]:
    size = disk.stat().st_size
    out = {}
    env = {**os.environ, "P2PCLONE_STATE_DIR": str(target.parent / "state")}
    with loop(disk, read_only=True) as src, loop(target) as dst:
        drop_caches()
        out["p2pclone clone"] = timed(lambda: [subprocess.Popen(
            [python, "-m", "p2pclone", "clone", src, dst, "--yes"], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)])  # fmt: skip
        drop_caches()
        out["bmaptool copy"] = timed(lambda: [subprocess.Popen(
            ["bmaptool", "copy", "--bmap", str(bmap), str(disk), dst],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)])  # fmt: skip
    drop_caches()
    wall = 0.0
    for start in (0, size - MIB):
        wall += timed(lambda start=start: [subprocess.Popen(
            ["dd", f"if={disk}", f"of={target}", "bs=1M", f"skip={start // MIB}",
             f"seek={start // MIB}", "count=1", "conv=notrunc,fsync", "status=none"])])  # fmt: skip
    for start, length, fs in parts:
        kind = "fat" if fs == "fat32" else fs
        with loop(disk, start, length, read_only=True) as s, loop(target, start, length) as d:
            wall += timed(lambda s=s, d=d, kind=kind: [subprocess.Popen(
                [f"partclone.{kind}", "-b", "-s", s, "-o", d, "-L", "/dev/null", "-q"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)])  # fmt: skip
    out["partclone -b"] = wall
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--size-mib", type=int, default=2048)
    # 0.32 of each filesystem in files makes partclone count ~40 % of the disk in use
    # (metadata: journals, inode tables, the MFT)
    ap.add_argument("--fill", type=float, default=0.32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--scratch", type=Path, default=Path("/var/tmp/p2pclone-bench"))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/realdisk.py needs root (loop devices, network namespaces)")
    for tool in ("partclone.ext4", "partclone.ntfs", "mkntfs", "sgdisk", "bmaptool", "mcopy"):
        if not shutil.which(tool):
            raise SystemExit(
                f"{tool} not found: apt install partclone ntfs-3g gdisk bmap-tools mtools"
            )
    args.scratch.mkdir(parents=True, exist_ok=True)
    disk = args.scratch / f"realdisk-{args.size_mib}M.img"
    info = build(disk, args.size_mib * MIB, args.fill, args.seed)
    parts = [tuple(p) for p in info["partitions"]]
    python = str(Path(".venv/bin/python").absolute()) if Path(".venv").is_dir() else sys.executable
    work = Path(tempfile.mkdtemp(prefix="realdisk-run-", dir=args.scratch))
    target = work / "target.img"
    runs: dict[str, list[dict[str, Any]]] = {"p2pclone": [], "clonezilla": [], "dd | nc": []}
    local: dict[str, list[float]] = {}
    try:
        used = used_bytes(disk, parts, work)
        bmap = work / "disk.bmap"
        sh("bmaptool", "create", "-o", bmap, disk)
        setup_netns()
        for k in range(args.repeat):
            for name, fn in (
                ("p2pclone", lambda k=k: run_p2pclone(python, disk, target, 7440 + k)),
                ("clonezilla", lambda k=k: run_clonezilla(disk, target, parts, 7450 + k)),
                ("dd | nc", lambda k=k: run_dd(disk, target, 7460 + k)),
            ):
                drop_caches()
                runs[name].append(fn())
                print(f"[realdisk] {name}: {runs[name][-1]}", file=sys.stderr)
            with open(target, "r+b") as t:
                t.truncate(disk.stat().st_size)
            for name, secs in local_runs(python, disk, target, parts, bmap).items():
                local.setdefault(name, []).append(secs)
                print(f"[realdisk] {name}: {secs:.2f} s", file=sys.stderr)
    finally:
        teardown_netns()
        shutil.rmtree(work, ignore_errors=True)
    res = summarize(disk, used, runs, local, args)
    publish(res, render(res), args.out, args.markdown)
    return 0


def summarize(disk: Path, used: int, runs: dict, local: dict, args: argparse.Namespace) -> dict:
    size = disk.stat().st_size
    med = {k: statistics.median(r["wall"] for r in v) for k, v in runs.items()}
    p2p = runs["p2pclone"]
    wire = statistics.median(r["wire"] for r in p2p)
    scan = statistics.median(r["scan"] for r in p2p)
    lmed = {k: statistics.median(v) for k, v in local.items()}
    mbps = {k: size / v / 1e6 for k, v in med.items()}
    targets = [
        ("link: p2pclone / Clonezilla pipeline throughput", ">= 1.3",
         med["clonezilla"] / med["p2pclone"], 1.3, True),
        ("link: p2pclone / dd|nc throughput", ">= 5", med["dd | nc"] / med["p2pclone"], 5, True),
        ("wire bytes / filesystems' used bytes", "<= 0.6", wire / used, 0.6, False),
        ("clone: p2pclone / partclone -b speed", ">= 1.0",
         lmed["partclone -b"] / lmed["p2pclone clone"], 1.0, True),
        ("clone: p2pclone / bmaptool copy speed", ">= 1.0",
         lmed["bmaptool copy"] / lmed["p2pclone clone"], 1.0, True),
        ("used-map scan / clone time (link)", "<= 0.02", scan / med["p2pclone"], 0.02, False),
    ]  # fmt: skip
    return {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python bench/realdisk.py " + " ".join(sys.argv[1:]),
        "disk_bytes": size,
        "used_bytes": used,
        "runs": runs,
        "local": local,
        "median_wall": med,
        "mb_per_s": mbps,
        "local_median": lmed,
        "p2pclone_wire": wire,
        "scan_seconds": scan,
        "targets": [
            {"target": t, "goal": g, "value": round(v, 3), "pass": v >= lim if higher else v <= lim}
            for t, g, v, lim, higher in targets
        ],  # fmt: skip
    }


def render(res: dict) -> str:
    lines = [
        f"Real disk, {res['when']} (`{res['command']}`): GPT, FAT32 + NTFS + ext4, "
        f"{res['disk_bytes'] >> 20} MiB, {res['used_bytes'] / 1e6:.0f} MB used (partclone), "
        "free space full of random bytes; medians",
        "",
        "| over the 1 Gbit link | wall s (runs) | MB/s of disk | wire MB |",
        "|---|---|---|---|",
    ]
    for name, rs in res["runs"].items():
        walls = ", ".join(f"{r['wall']:.2f}" for r in rs)
        wire = statistics.median(r["wire"] for r in rs) / 1e6
        lines.append(f"| {name} | {res['median_wall'][name]:.2f} ({walls}) | "
                     f"{res['mb_per_s'][name]:.0f} | {wire:.0f} |")  # fmt: skip
    lines += ["", "| on this machine | wall s (runs) |", "|---|---|"]
    for name, vs in res["local"].items():
        walls = ", ".join(f"{v:.2f}" for v in vs)
        lines.append(f"| {name} | {res['local_median'][name]:.2f} ({walls}) |")
    lines += ["", f"Used-map scan (sender, from its `map` line): {res['scan_seconds']:.3f} s", "",
              "| target | goal | measured | |", "|---|---|---|---|"]  # fmt: skip
    for t in res["targets"]:
        lines.append(f"| {t['target']} | {t['goal']} | {t['value']} | "
                     f"{'PASS' if t['pass'] else 'FAIL'} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
