"""Benchmark saving a disk to an SMB share and restoring it: p2pclone against
``dd | zstd | smbclient``, side by side in one run.

Usage (as root, from the repository root)::

    .venv/bin/python bench/image.py [--size-mib 1024] [--repeat 3] [--out F.json] [--markdown F]

Method
------
A throwaway Samba server (smbd on 127.0.0.1 at a free port, its own configuration,
share and user, as the tests start it) holds the images.  The input is the realistic
ext4 image of bench/mkdisk.py.  Each run drops the page cache first, so sources are
read cold; runs of the tools alternate; the median of ``--repeat`` runs is reported.

* save, p2pclone:  ``p2pclone send DISK smb://USER@127.0.0.1:PORT/images/b.p2pc
  --passphrase … --fresh``
  (encrypted, zero ranges skipped, zstd -1 per chunk, BLAKE3 per chunk, index written
  and flushed).
* save, baseline:  ``dd if=DISK bs=1M | zstd -1 -T0 | smbclient //127.0.0.1/images -p PORT
  -U USER%PASS -c 'put - b.zst'`` (no encryption, no hashes).
* restore, p2pclone:  ``p2pclone receive TARGET smb://…/b.p2pc --passphrase … --yes`` (every chunk
  checked against its BLAKE3, the root hash checked, target fsynced).
* restore, baseline:  ``smbclient … -c 'get b.zst -' | zstd -d | dd of=TARGET bs=1M
  iflag=fullblock conv=fsync``.
* save again (not a target; once, after the repeats): the same ``p2pclone send`` without
  ``--fresh`` onto the complete image of the unchanged disk, as when a backup is
  refreshed; the baseline has no such mode and writes everything again.

Both sides of each pipeline and smbd share this machine's two cores.  Every restored
target is compared with the source.  Targets (issue 6): image size <= 0.45x the disk;
save wall time <= 0.8x the baseline's; restore speed >= 1.0x the baseline's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import pwd
import shutil
import signal
import socket
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

MIB = 1 << 20
USER, PASSWORD, CODE = "p2pclone-smb", "Bench-pass-1", "bench image passphrase"


def start_smbd(base: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
            check=True,
        )
    for name in ("private", "lock", "state", "cache", "pid", "ncalrpc", "share"):
        (base / name).mkdir(parents=True, exist_ok=True)
    shutil.chown(base / "share", USER)
    os.chmod(base, 0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = base / "smb.conf"
    conf.write_text(
        "[global]\n  server role = standalone server\n  interfaces = 127.0.0.1\n"
        f"  smb ports = {port}\n  bind interfaces only = yes\n  disable netbios = yes\n"
        + "".join(
            f"  {key} = {base / name}\n"
            for key, name in (
                ("private dir", "private"),
                ("lock directory", "lock"),
                ("state directory", "state"),
                ("cache directory", "cache"),
                ("pid directory", "pid"),
                ("ncalrpc dir", "ncalrpc"),
            )
        )
        + f"  log file = {base}/log.%m\n  passdb backend = tdbsam:{base}/private/passdb.tdb\n"
        "  map to guest = never\n  load printers = no\n  printing = bsd\n"
        "  printcap name = /dev/null\n  disable spoolss = yes\n"
        f"[images]\n  path = {base / 'share'}\n  read only = no\n  valid users = {USER}\n"
    )
    subprocess.run(
        ["smbpasswd", "-c", str(conf), "-s", "-a", USER],
        input=f"{PASSWORD}\n{PASSWORD}\n".encode(),
        check=True,
        capture_output=True,
    )
    proc = subprocess.Popen(
        ["smbd", "--foreground", "--no-process-group", "-s", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # smbd signals its process group when it stops
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port, base / "share"
        except OSError:
            time.sleep(0.1)
    raise SystemExit("smbd did not start")


def timed(cmd: list[str] | str, env: dict[str, str]) -> tuple[float, str]:
    drop_caches()
    t0 = time.perf_counter()
    p = subprocess.run(
        cmd, shell=isinstance(cmd, str), env=env, capture_output=True, text=True, timeout=1800
    )
    wall = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"failed ({p.returncode}): {cmd}\n{p.stderr[-2000:]}")
    return wall, p.stdout


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scratch", type=Path, default=Path("/var/tmp/p2pclone-bench"))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/image.py needs root (smbd, drop_caches)")
    for tool in ("smbd", "smbclient", "zstd", "dd"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found: apt install samba smbclient zstd")

    size = args.size_mib * MIB
    disk = args.scratch / f"realistic-{args.size_mib}M.img"
    mkdisk.build_realistic(disk, mkdisk.realistic_recipe(size, args.seed))
    python = str(Path(".venv/bin/python").absolute()) if Path(".venv").is_dir() else sys.executable
    base = Path(tempfile.mkdtemp(prefix="p2pb-smb-", dir=args.scratch))
    smbd, port, share = start_smbd(base)
    env = dict(os.environ, P2PCLONE_SMB_PASSWORD=PASSWORD, P2PCLONE_STATE_DIR=str(base / "st"))
    url = f"smb://{USER}@127.0.0.1:{port}/images/b.p2pc"
    smb = f"smbclient //127.0.0.1/images -p {port} -U '{USER}%{PASSWORD}'"
    target = args.scratch / "image-target.img"
    runs: dict[str, list[float]] = {k: [] for k in ("save", "save_base", "restore", "restore_base")}
    try:
        for r in range(args.repeat):
            wall, _ = timed(
                [python, "-m", "p2pclone", "send", str(disk), url, "--passphrase", CODE, "--fresh"],
                env,
            )
            runs["save"].append(wall)
            wall, _ = timed(
                f"dd if={disk} bs=1M status=none | zstd -1 -T0 -q | {smb} -c 'put - b.zst' "
                ">/dev/null",
                env,
            )
            runs["save_base"].append(wall)
            target.unlink(missing_ok=True)
            wall, _ = timed(
                [
                    python,
                    "-m",
                    "p2pclone",
                    "receive",
                    str(target),
                    url,
                    "--passphrase",
                    CODE,
                    "--yes",
                ],
                env,
            )
            runs["restore"].append(wall)
            same = subprocess.run(["cmp", "-s", str(disk), str(target)]).returncode == 0
            target.unlink(missing_ok=True)
            wall, _ = timed(
                f"{smb} -c 'get b.zst -' 2>/dev/null | zstd -d -q | dd of={target} bs=1M "
                "iflag=fullblock conv=fsync status=none",
                env,
            )
            runs["restore_base"].append(wall)
            same_base = subprocess.run(["cmp", "-s", str(disk), str(target)]).returncode == 0
            if not (same and same_base):
                raise SystemExit(f"restored target differs (p2pclone {same}, baseline {same_base})")
            print(
                f"[image] run {r + 1}: save {runs['save'][-1]:.2f} s (baseline "
                f"{runs['save_base'][-1]:.2f} s), restore {runs['restore'][-1]:.2f} s "
                f"(baseline {runs['restore_base'][-1]:.2f} s)",
                file=sys.stderr,
                flush=True,
            )
        image_bytes = (share / "b.p2pc").stat().st_size
        base_bytes = (share / "b.zst").stat().st_size
        # The backup is refreshed: the same save again, the disk unchanged.
        resave, _ = timed(
            [python, "-m", "p2pclone", "send", str(disk), url, "--passphrase", CODE], env
        )
        resave_bytes = (share / "b.p2pc").stat().st_size
    finally:
        os.killpg(smbd.pid, signal.SIGTERM)
        smbd.wait(10)
        target.unlink(missing_ok=True)
        shutil.rmtree(base, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in runs.items()}
    res: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"python bench/image.py --size-mib {args.size_mib} --repeat {args.repeat}",
        "disk_bytes": size,
        "runs_s": runs,
        "median_s": med,
        "image_bytes": image_bytes,
        "baseline_bytes": base_bytes,
        "resave_s": resave,
        "resave_image_bytes": resave_bytes,
    }
    targets = [
        ("image size / disk size", image_bytes / size, "<= 0.45", image_bytes / size <= 0.45),
        (
            "save wall time / baseline's",
            med["save"] / med["save_base"],
            "<= 0.8",
            med["save"] / med["save_base"] <= 0.8,
        ),
        (
            "restore speed / baseline's",
            med["restore_base"] / med["restore"],
            ">= 1.0",
            med["restore_base"] / med["restore"] >= 1.0,
        ),
    ]
    res["targets"] = [{"target": t, "value": v, "goal": g, "pass": ok} for t, v, g, ok in targets]
    lines = [
        f"Image save/restore over SMB on loopback, {res['when']} (`{res['command']}`), "
        f"realistic disk of {args.size_mib} MiB, median of {args.repeat}",
        "",
        "| | p2pclone | baseline | MB/s p2pclone | MB/s baseline |",
        "|---|---|---|---|---|",
        f"| save (s) | {med['save']:.2f} | {med['save_base']:.2f} | "
        f"{size / med['save'] / 1e6:.0f} | {size / med['save_base'] / 1e6:.0f} |",
        f"| restore (s) | {med['restore']:.2f} | {med['restore_base']:.2f} | "
        f"{size / med['restore'] / 1e6:.0f} | {size / med['restore_base'] / 1e6:.0f} |",
        f"| stored bytes | {image_bytes:,} | {base_bytes:,} | | |",
        f"| save again, disk unchanged (s) | {resave:.2f} | {med['save_base']:.2f} | "
        f"{size / resave / 1e6:.0f} | {size / med['save_base'] / 1e6:.0f} |",
        "",
        "| target | value | goal | |",
        "|---|---|---|---|",
    ] + [f"| {t} | {v:.3f} | {g} | {'PASS' if ok else 'FAIL'} |" for t, v, g, ok in targets]
    text = "\n".join(lines) + "\n"
    publish(res, text, args.out, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
