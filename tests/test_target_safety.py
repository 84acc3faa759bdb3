"""A file or disk target is opened once, before listening, and nothing redirects it.

Each test names the defence it backs and what it did without it (the negative control,
run once on the code before the defence).
"""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest
import trio

from p2pclone.disks import Target
from p2pclone.errors import SafetyError, TargetError
from p2pclone.jobs import receive, send
from p2pclone.options import ReceiveOptions, SendOptions
from p2pclone.session import Listening, pick_error
from tests.conftest import MiB, random_file, read_dev

CODE = "3-safe-target"


async def test_a_link_put_at_the_path_while_waiting_redirects_nothing(tmp_path: Path) -> None:
    """The receiver waits for its sender; meanwhile someone replaces the target path
    with a symbolic link to a victim file.  Nothing may reach the victim.

    Negative control: the old receiver opened the path with O_CREAT only after pairing,
    following the link: the victim was overwritten with the source (this test failed).
    """
    source = tmp_path / "s.img"
    random_file(source, 3 * MiB)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious " * 1000)
    before = victim.read_bytes()
    target = tmp_path / "t.img"
    errors: dict[str, BaseException] = {}
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:

            async def rx(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
                try:
                    await receive(
                        str(target),
                        "tcp://127.0.0.1:0",
                        ReceiveOptions(code=CODE),
                        task_status=task_status,
                    )
                except BaseException as exc:  # noqa: BLE001
                    errors["rx"] = pick_error(exc)

            url = await nursery.start(rx)
            if target.exists():
                target.unlink()
            target.symlink_to(victim)
            try:
                await send(str(source), url, SendOptions(code=CODE))
            except BaseException as exc:  # noqa: BLE001
                errors["tx"] = pick_error(exc)
    assert victim.read_bytes() == before
    assert isinstance(errors.get("rx"), TargetError), errors
    assert "replaced while the receiver waited" in str(errors["rx"])


def test_a_link_to_a_file_is_refused_and_a_new_file_is_private(tmp_path: Path) -> None:
    """A file target given as a symbolic link is refused (its real path must be given);
    a new target file is created 0600, since it will hold a whole disk.

    Negative control: the old Target.open followed the link, and created files 0644."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"x")
    link = tmp_path / "link.img"
    link.symlink_to(victim)
    with pytest.raises(TargetError, match="is a symbolic link .to .*victim.: give the file's real"):
        Target.open(str(link))
    t = Target.open(str(tmp_path / "new.img"))
    t.prepare(MiB)
    t.close()
    assert (tmp_path / "new.img").stat().st_mode & 0o777 == 0o600


def test_a_file_open_in_another_program_is_refused(tmp_path: Path) -> None:
    """Cloning into a file another program holds open (a VM's disk, an editor, a
    running dd) corrupts both.  Negative control: accepted before (this test failed)."""
    path = tmp_path / "busy.img"
    path.write_bytes(bytes(MiB))
    with open(path, "rb") as held:
        holder = subprocess.Popen(["sleep", "30"], stdin=held)
    try:
        with pytest.raises(SafetyError, match="is open in another program"):
            Target.open(str(path))
    finally:
        holder.kill()
        holder.wait()
    Target.open(str(path)).close()  # free again


@pytest.mark.root
def test_the_backing_file_of_a_loop_device_is_refused(tmp_path: Path, loop_device) -> None:
    """Writing a loop device's backing file underneath it corrupts whatever uses the
    device.  Negative control: accepted before (this test failed)."""
    dev = loop_device(4 * MiB, None)
    backing = tmp_path / "loop0.img"
    with pytest.raises(SafetyError, match=f"is the backing file of {dev}: detach it first"):
        Target.open(str(backing))


@pytest.mark.root
async def test_a_read_only_disk_is_refused_before_listening(tmp_path: Path, loop_device) -> None:
    """``blockdev --setro``: refused before the receiver listens, saying "read-only".
    Negative control: the old receiver listened, paired, and failed at byte 0 with
    "Operation not permitted"."""
    junk = random.Random(3).randbytes(4 * MiB)
    dev = loop_device(4 * MiB, junk)
    subprocess.run(["blockdev", "--setro", dev], check=True)
    heard: list[object] = []
    try:
        with trio.fail_after(10), pytest.raises(TargetError, match="is read-only .*--setrw"):
            await receive(dev, "tcp://127.0.0.1:0", ReceiveOptions(code=CODE), report=heard.append)
    finally:
        subprocess.run(["blockdev", "--setrw", dev], check=True)
    assert not any(isinstance(r, Listening) for r in heard)
    assert read_dev(dev, 4 * MiB) == junk


async def test_an_unusable_state_dir_is_refused_before_listening(tmp_path: Path) -> None:
    """The journal's folder is checked before listening, and no target file is left.
    Negative control: the old receiver paired first, then failed, leaving a sparse
    target file behind."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    heard: list[object] = []
    target = tmp_path / "t.img"
    with trio.fail_after(10), pytest.raises(TargetError, match="state directory"):
        await receive(
            str(target),
            "tcp://127.0.0.1:0",
            ReceiveOptions(code=CODE, state_dir=Path(blocker / "state")),
            report=heard.append,
        )
    assert not heard and not target.exists()
    assert os.listdir(tmp_path) == ["not-a-folder"]


@pytest.mark.root
async def test_a_full_filesystem_is_foreseen_and_the_error_says_resume(tmp_path: Path) -> None:
    """A file target on a filesystem too small for the source: the user is warned at
    the start, and the ENOSPC error says that the same commands resume once space is
    freed.  Negative control: the old code said only "No space left on device"."""
    from p2pclone.session import Notice

    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        source = tmp_path / "s.img"
        random_file(source, 4 * MiB)
        notes: list[str] = []
        errors: dict[str, BaseException] = {}

        def report(event: object) -> None:
            if isinstance(event, Notice):
                notes.append(event.message)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:

                async def rx(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED):
                    try:
                        await receive(
                            str(mnt / "t.img"),
                            "tcp://127.0.0.1:0",
                            ReceiveOptions(code=CODE),
                            report=report,
                            task_status=task_status,
                        )
                    except BaseException as exc:  # noqa: BLE001
                        errors["rx"] = pick_error(exc)

                url = await nursery.start(rx)
                try:
                    await send(str(source), url, SendOptions(code=CODE))
                except BaseException as exc:  # noqa: BLE001
                    errors["tx"] = pick_error(exc)
        assert any("less free space than the source" in n for n in notes), notes
        assert isinstance(errors.get("rx"), TargetError), errors
        assert "No space left on device" in str(errors["rx"])
        assert "run the same commands again (the clone resumes" in str(errors["rx"])
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
