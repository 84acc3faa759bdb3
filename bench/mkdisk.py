"""Build the benchmark's input disks.

Two kinds of input, both plain files, both fully allocated on disk (never sparse,
so every tool has to read every byte from the device, free space included):

* ``realistic``: an ext4 image made with ``mkfs.ext4 -d`` from a directory tree
  filled to ``fill`` (default 55 %) of the image size.  Of those bytes,
  ``compressible_share`` (default 2/3) are copies of real files from this machine
  (shared libraries, executables, python sources, locale data, docs, ...) picked
  by a seeded shuffle of every regular file below ``roots``, and the rest are
  seeded pseudo-random files posing as media and archives under ``home/user``.
  The image file is first written with zeros and ``mkfs`` runs with
  ``-E nodiscard``, so free space is real zero blocks, as on a freshly made
  filesystem.
* ``random``: the same size of seeded pseudo-random bytes (incompressible).

Each image is written next to a ``.json`` sidecar holding its recipe and
composition; an image is reused when its recipe matches the requested one.

Standalone use::

    python bench/mkdisk.py realistic /var/tmp/p2pclone-bench/realistic-1024M.img --size-mib 1024
    python bench/mkdisk.py random /var/tmp/p2pclone-bench/random-1024M.img --size-mib 1024
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

MIB = 1 << 20
BLOCK = 16 * MIB

DEFAULT_ROOTS = ("/usr/lib", "/usr/share", "/usr/bin", "/usr/include", "/etc", "/root/.pyenv")
MAX_COPIED_FILE = 32 * MIB  # skip huge files so no single file dominates the mix
RECIPE_VERSION = 1

# (directory under the tree, extension, min size, max size) for incompressible files
MEDIA_KINDS: tuple[tuple[str, str, int, int], ...] = (
    ("home/user/Pictures", ".jpg", 256 * 1024, 8 * MIB),
    ("home/user/Music", ".flac", 4 * MIB, 32 * MIB),
    ("home/user/Videos", ".mp4", 16 * MIB, 64 * MIB),
    ("home/user/Downloads", ".tar.zst", MIB, 48 * MIB),
    ("var/backups", ".gpg", 64 * 1024, 4 * MIB),
)


def realistic_recipe(
    size: int,
    seed: int,
    roots: tuple[str, ...] = DEFAULT_ROOTS,
    fill: float = 0.55,
    compressible_share: float = 2 / 3,
) -> dict[str, Any]:
    return {
        "kind": "realistic",
        "version": RECIPE_VERSION,
        "size_bytes": size,
        "seed": seed,
        "fill_fraction": fill,
        "compressible_share": compressible_share,
        "compressible_source_roots": list(roots),
        "max_copied_file_bytes": MAX_COPIED_FILE,
        "incompressible_generator": "random.Random(seed).randbytes, files posing as media/archives",
        "mkfs": f"mkfs.ext4 -q -F -E nodiscard -d TREE IMAGE {size // 1024}k"
        " (image pre-written with zeros)",
    }


def random_recipe(size: int, seed: int) -> dict[str, Any]:
    return {
        "kind": "random",
        "version": RECIPE_VERSION,
        "size_bytes": size,
        "seed": seed,
        "generator": "random.Random(seed).randbytes in 16 MiB blocks",
    }


def _sidecar(image: Path) -> Path:
    return image.with_name(image.name + ".json")


def load_if_current(image: Path, recipe: dict[str, Any]) -> dict[str, Any] | None:
    """Return the stored description if ``image`` was built from ``recipe``."""
    side = _sidecar(image)
    try:
        info: dict[str, Any] = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    if (
        info.get("recipe") != recipe
        or not image.is_file()
        or image.stat().st_size != recipe["size_bytes"]
    ):
        return None
    return info


def _write_random(f: Any, rng: random.Random, n: int) -> None:
    while n > 0:
        step = min(BLOCK, n)
        f.write(rng.randbytes(step))
        n -= step


def _log(msg: str) -> None:
    print(f"[mkdisk] {msg}", file=sys.stderr, flush=True)


def _candidate_files(roots: tuple[str, ...], exclude: Path) -> list[tuple[str, str, int]]:
    """Every regular file below ``roots`` as (root, path, size), in a stable order."""
    out: list[tuple[str, str, int]] = []
    excl = str(exclude.resolve())
    for root in roots:
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            dirnames[:] = [d for d in dirnames if not os.path.join(dirpath, d).startswith(excl)]
            for name in sorted(filenames):
                p = os.path.join(dirpath, name)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and 0 < st.st_size <= MAX_COPIED_FILE:
                    out.append((root, p, st.st_size))
    return out


def _populate_tree(tree: Path, recipe: dict[str, Any], scratch: Path) -> dict[str, Any]:
    size = recipe["size_bytes"]
    rng = random.Random(recipe["seed"])
    total_budget = int(size * recipe["fill_fraction"])
    comp_budget = int(total_budget * recipe["compressible_share"])
    rand_budget = total_budget - comp_budget

    cands = _candidate_files(tuple(recipe["compressible_source_roots"]), scratch)
    rng.shuffle(cands)
    per_root: Counter[str] = Counter()
    per_root_files: Counter[str] = Counter()
    per_ext: Counter[str] = Counter()
    copied = nfiles = 0
    for root, src, fsize in cands:
        if copied >= comp_budget:
            break
        if copied + fsize > comp_budget:
            continue
        dst = tree / src.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copy2(src, dst, follow_symlinks=False)
        except OSError:
            continue
        copied += fsize
        nfiles += 1
        per_root[root] += fsize
        per_root_files[root] += 1
        ext = os.path.splitext(src)[1].lower()
        per_ext[ext if ext and len(ext) <= 8 else "(none)"] += fsize

    made = nmedia = 0
    per_kind: Counter[str] = Counter()
    while rand_budget - made >= 4096:
        d, ext, lo, hi = rng.choice(MEDIA_KINDS)
        n = min(rand_budget - made, rng.randint(lo, hi))
        path = tree / d / f"file-{nmedia:05d}{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            _write_random(f, rng, n)
        made += n
        nmedia += 1
        per_kind[ext] += n

    return {
        "compressible_bytes": copied,
        "compressible_files": nfiles,
        "compressible_bytes_by_root": dict(per_root),
        "compressible_files_by_root": dict(per_root_files),
        "compressible_top_extensions_by_bytes": dict(per_ext.most_common(12)),
        "incompressible_bytes": made,
        "incompressible_files": nmedia,
        "incompressible_bytes_by_extension": dict(per_kind),
        "file_bytes_total": copied + made,
        "file_bytes_fraction_of_image": round((copied + made) / size, 4),
    }


def _zero_fill(path: Path, size: int) -> None:
    zeros = bytes(BLOCK)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            left -= f.write(zeros[: min(BLOCK, left)])
        f.flush()
        os.fsync(f.fileno())


def build_realistic(image: Path, recipe: dict[str, Any]) -> dict[str, Any]:
    cached = load_if_current(image, recipe)
    if cached is not None:
        return cached
    t0 = time.monotonic()
    size = recipe["size_bytes"]
    image.parent.mkdir(parents=True, exist_ok=True)
    tree = image.with_name(image.name + ".tree")
    shutil.rmtree(tree, ignore_errors=True)
    _sidecar(image).unlink(missing_ok=True)
    tree.mkdir()
    _log(f"populating {tree} for a {size // MIB} MiB image")
    comp = _populate_tree(tree, recipe, image.parent)
    _log(f"writing zeros to {image}")
    _zero_fill(image, size)
    _log("running mkfs.ext4 -d")
    subprocess.run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-E",
            "nodiscard",
            "-d",
            str(tree),
            str(image),
            f"{size // 1024}k",
        ],
        check=True,
    )
    shutil.rmtree(tree)
    with open(image, "rb+") as f:
        os.fsync(f.fileno())
    st = image.stat()
    info = {
        "recipe": recipe,
        "composition": comp,
        "allocated_bytes": st.st_blocks * 512,
        "build_seconds": round(time.monotonic() - t0, 1),
    }
    _sidecar(image).write_text(json.dumps(info, indent=2) + "\n")
    _log(f"built {image} in {info['build_seconds']} s")
    return info


def build_random(image: Path, recipe: dict[str, Any]) -> dict[str, Any]:
    cached = load_if_current(image, recipe)
    if cached is not None:
        return cached
    t0 = time.monotonic()
    image.parent.mkdir(parents=True, exist_ok=True)
    _sidecar(image).unlink(missing_ok=True)
    _log(f"writing {recipe['size_bytes'] // MIB} MiB of random bytes to {image}")
    with open(image, "wb") as f:
        _write_random(f, random.Random(recipe["seed"]), recipe["size_bytes"])
        f.flush()
        os.fsync(f.fileno())
    info = {
        "recipe": recipe,
        "allocated_bytes": image.stat().st_blocks * 512,
        "build_seconds": round(time.monotonic() - t0, 1),
    }
    _sidecar(image).write_text(json.dumps(info, indent=2) + "\n")
    return info


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("kind", choices=("realistic", "random"))
    ap.add_argument("image", type=Path)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    size = a.size_mib * MIB
    if a.kind == "realistic":
        info = build_realistic(a.image, realistic_recipe(size, a.seed))
    else:
        info = build_random(a.image, random_recipe(size, a.seed))
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
