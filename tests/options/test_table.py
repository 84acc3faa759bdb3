"""Every option against every far end: honoured, with an effect checked, or refused.

Issue 23: options given with ``multicast://`` (``--delta``, ``--fresh``, ``--retries``,
``--scrape``, ``--read-timeout``) were silently dropped.  Here each field of
:class:`~p2pclone.options.SendOptions` and :class:`~p2pclone.options.ReceiveOptions`
is given against each far end — tcp, serial (a pty cable), memory, a file:// and an
smb:// image (a real Samba server), multicast (one process in a network namespace, on
loopback) and ``clone`` (two disks on one machine, over the in-process pipe) — and the
table below says which honour it.  A cell marked honoured runs for real and checks the
option's effect (the chunk count, the free bytes, the pairing, what a failing disk's
reads did, what the target holds); a cell marked refused must end in a usage error
(exit 2) naming the option and the far end, with the target untouched and nothing
opened.  ``test_every_option_has_a_row`` fails when an option is added without one.

Negative controls (each tried once, then undone):

* the multicast driver's ``delta=self.options.delta`` taken out of the group's PLAN:
  the cell ``send delta multicast`` fails (same_chunks 0: every chunk sent again);
* ``refuse_unhonoured`` made a no-op: every refused cell fails ("no usage error");
* ``GROUP_SEND`` given ``fresh``: ``send fresh multicast`` fails the same way;
* the sender's stream not wrapped in ``Paced`` for ``--limit-rate``: the three
  ``send limit_rate`` cells fail (the bytes crossed faster than the rate).
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import uuid
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pclone.clone import clone
from p2pclone.errors import UsageError
from p2pclone.jobs import receive, send
from p2pclone.options import ReceiveOptions, SendOptions, flag
from tests.conftest import MiB, can_loop
from tests.failing_disk import failing_disk
from tests.options.conftest import run_in_netns
from tests.options.run import CODE, PASSPHRASE, Spec, run
from tests.samba import Samba
from tests.transports.test_serial import cable

pytestmark = pytest.mark.slow

LINKS = ("tcp", "serial", "memory")
IMAGES = ("file", "smb")
FARS = (*LINKS, *IMAGES, "multicast", "clone")
ALL = frozenset(FARS)

# option -> the far ends that honour it (a disk or file as SOURCE and TARGET); the
# others must refuse it.  ``clone`` is a disk onto a disk.
SEND_TABLE: dict[str, frozenset[str]] = {
    "code": frozenset({*LINKS, "multicast"}),
    "passphrase": frozenset(IMAGES),  # the image saved (from an image SOURCE: below)
    "new_passphrase": frozenset(),  # only an image saved from an image (below)
    "password": frozenset({"smb"}),
    "chunk_size": ALL,
    "partitions": ALL,
    "skip": ALL,
    "exact": ALL,
    "allow_mounted": ALL,
    "retries": ALL,
    "scrape": ALL,
    "read_timeout": ALL,
    "delta": frozenset({*LINKS, "multicast"}),  # clone: the target's own --delta
    "fresh": frozenset(IMAGES),
    "receivers": frozenset({"multicast"}),
    "wait": frozenset({"tcp", "multicast"}),
    "limit_rate": frozenset({"tcp", *IMAGES}),  # serial: its baud; a group: rate=
}
RECEIVE_TABLE: dict[str, frozenset[str]] = {
    "code": frozenset({*LINKS, "multicast"}),
    "passphrase": frozenset(IMAGES),
    "password": frozenset({"smb"}),
    "partitions": frozenset(IMAGES),  # a restore: the receiver reads the image itself
    "skip": frozenset(IMAGES),
    "yes": ALL,
    "verify": ALL,
    "delta": ALL,
    "grow": ALL,
    "proportional": ALL,
    "cut": ALL - {"multicast"},  # a group's members must hold the whole source
    "new_ids": ALL,
    "discard": ALL,
    "fresh": ALL,
    "state_dir": ALL,
    "journal": ALL,
    "limit_rate": frozenset({"tcp", *IMAGES}),
}
# An image as SOURCE: what reads a disk is refused everywhere, its passphrase honoured.
IMAGE_SOURCE_TABLE: dict[str, frozenset[str]] = {
    "passphrase": frozenset({*LINKS, *IMAGES, "multicast"}),
    "new_passphrase": frozenset(IMAGES),
    "partitions": frozenset({*LINKS, *IMAGES, "multicast"}),
    "skip": frozenset({*LINKS, *IMAGES, "multicast"}),
    "exact": frozenset(),
    "allow_mounted": frozenset(),
    "retries": frozenset(),
    "scrape": frozenset(),
    "read_timeout": frozenset(),
}

#: a receiver's code whose guess budget is one failed pairing (a stronger one listens
#: again after a wrong code: jobs.Typos), so the wrong-code cells end with exit 3
WEAK = "3-zq"

#: --limit-rate in the cells: bytes/s (the disk's used blocks take seconds at it)
LIMIT = 512 * 1024

# a value that counts as given, for each option
GIVEN: dict[str, Any] = {
    "code": CODE,
    "passphrase": PASSPHRASE,
    "new_passphrase": "the new one",
    "password": "not the password",
    "chunk_size": 65536,
    "partitions": (1,),
    "skip": (1,),
    "exact": True,
    "allow_mounted": True,
    "retries": 0,
    "scrape": True,
    "read_timeout": 0.5,
    "delta": True,
    "fresh": True,
    "receivers": 2,
    "wait": 3.0,
    "yes": True,
    "verify": True,
    "grow": 0,
    "proportional": True,
    "cut": True,
    "new_ids": True,
    "discard": True,
    "state_dir": "/nonexistent/state",
    "journal": False,
    "limit_rate": LIMIT,
}


def test_every_option_has_a_row() -> None:
    """Catches an option added without a row here (it could be dropped unseen)."""
    assert set(SEND_TABLE) == {f.name for f in fields(SendOptions)}
    assert set(RECEIVE_TABLE) == {f.name for f in fields(ReceiveOptions)}
    assert set(GIVEN) == set(SEND_TABLE) | set(RECEIVE_TABLE)


def _cells(table: dict[str, frozenset[str]], honoured: bool) -> list[tuple[str, str]]:
    return [(o, far) for o, fars in table.items() for far in FARS if (far in fars) == honoured]


# -- refused: a usage error before anything is opened ------------------------------------


def _base(far: str, side: str) -> dict[str, Any]:
    if far in IMAGES:
        return {"passphrase": PASSPHRASE}
    if far == "clone":
        return {}
    return {"code": CODE}


@pytest.mark.parametrize(("option", "far"), _cells(SEND_TABLE, honoured=False))
async def test_a_send_option_is_refused(tmp_path: Path, world: World, option: str, far: str):
    await world.refused("send", option, far)


@pytest.mark.parametrize(("option", "far"), _cells(RECEIVE_TABLE, honoured=False))
async def test_a_receive_option_is_refused(tmp_path: Path, world: World, option: str, far: str):
    await world.refused("receive", option, far)


@pytest.mark.parametrize(("option", "far"), _cells(IMAGE_SOURCE_TABLE, honoured=False))
async def test_an_image_source_refuses_what_reads_a_disk(world: World, option: str, far: str):
    await world.refused("send", option, far, source=await world.image_source())


# -- honoured: each with its effect -----------------------------------------------------


@pytest.mark.parametrize(("option", "far"), _cells(SEND_TABLE, honoured=True))
async def test_a_send_option_is_honoured(world: World, option: str, far: str) -> None:
    await getattr(world, f"send_{option}")(far)


@pytest.mark.parametrize(("option", "far"), _cells(RECEIVE_TABLE, honoured=True))
async def test_a_receive_option_is_honoured(world: World, option: str, far: str) -> None:
    await getattr(world, f"receive_{option}")(far)


@pytest.mark.parametrize(("option", "far"), _cells(IMAGE_SOURCE_TABLE, honoured=True))
async def test_an_image_source_honours_its_passphrases(world: World, option: str, far: str):
    await getattr(world, f"image_source_{option}")(far)


# -- the world the cells run in ---------------------------------------------------------


@pytest.fixture(scope="session")
def gpt_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GPT disk with an ext4 partition holding files (and dirty free space): 24 MiB."""
    if can_loop():
        pytest.skip(can_loop())
    from tests.volumes.builders import make_disk

    path = tmp_path_factory.mktemp("table") / "disk.img"
    make_disk(path, 24 * MiB, [("ext4", 20 * MiB)])
    return path


@pytest.fixture
def world(
    tmp_path: Path, gpt_disk: Path, mc_netns: str, samba: Samba, monkeypatch: pytest.MonkeyPatch
) -> World:
    monkeypatch.setenv("P2PCLONE_SMB_PASSWORD", samba.password)
    return World(tmp_path, gpt_disk, mc_netns, samba)


class World:
    """One cell's run: sources, targets and far ends made for it."""

    def __init__(self, tmp: Path, disk: Path, netns: str, samba: Samba) -> None:
        self.tmp, self.disk, self.netns, self.samba = tmp, disk, netns, samba
        self.n = 0
        self.size = disk.stat().st_size

    # -- making things ---------------------------------------------------------------

    def name(self, stem: str) -> str:
        self.n += 1
        return f"{stem}{self.n}"

    def target(self, fill: bytes | None = None) -> Path:
        path = self.tmp / f"{self.name('t')}.img"
        path.write_bytes(fill if fill is not None else os.urandom(self.size))
        return path

    def image_url(self, far: str) -> str:
        if far == "smb":
            return self.samba.url(f"{uuid.uuid4().hex[:8]}.p2pc")
        return f"file://{self.tmp}/{self.name('img')}.p2pc"

    async def image_source(self, passphrase: str = PASSPHRASE) -> str:
        url = self.image_url("file")
        await send(str(self.disk), url, SendOptions(passphrase=passphrase))
        return url

    # -- running ---------------------------------------------------------------------

    async def go(
        self,
        far: str,
        side: str,
        *,
        send_options: dict[str, Any] | None = None,
        receive_options: dict[str, Any] | None = None,
        source: str | None = None,
        targets: list[Path] | None = None,
        image: str | None = None,
        late: float = 0.0,
        refuse: bool = False,
        seconds: float = 90.0,
    ) -> dict[str, Any]:
        """Run one clone over ``far``; the outcome (tests/options/run.py) as a dict.

        For a file or smb far end, ``side`` "send" saves to ``image`` (new by default),
        "receive" restores from it (saved first from the disk when not given)."""
        targets = targets or [self.target()]
        spec = Spec(
            far=far,
            side=side,
            source=source or str(self.disk),
            targets=[str(t) for t in targets],
            send={**_base(far, "send"), **(send_options or {})},
            receive={**_base(far, "receive"), **(receive_options or {})},
            late=late,
            refuse=refuse,
            seconds=seconds,
        )
        if far == "tcp":
            port = _free_port() if late else 0
            spec.rx_url = f"tcp://127.0.0.1:{port}"
            spec.url = spec.rx_url if late else ""
        elif far == "memory":
            spec.url = f"memory://{self.name('opt')}"
        elif far in IMAGES:
            if side == "send":
                spec.url = image or self.image_url(far)
                spec.targets = [spec.url]
            else:
                spec.url = image or await self._saved(far, source=source)
                spec.source = ""
        elif far == "multicast":
            self.n += 1
            spec.url = f"multicast://239.77.{self.n // 250}.{self.n % 250 + 1}?iface=lo"
            return await trio.to_thread.run_sync(
                run_in_netns, self.netns, asdict(spec), seconds + 30
            )
        elif far == "clone":
            pass
        if far == "serial":
            async with cable() as (a, b):
                spec.url = f"serial://{a}?baud=921600"
                spec.rx_url = f"serial://{b}?baud=921600"
                return asdict(await run(spec))
        return asdict(await run(spec))

    async def _saved(
        self, far: str, passphrase: str = PASSPHRASE, *, source: str | None = None
    ) -> str:
        """An image of ``source`` (the disk), saved with ``passphrase``."""
        url = self.image_url(far)
        await send(source or str(self.disk), url, SendOptions(passphrase=passphrase))
        return url

    async def refused(self, side: str, option: str, far: str, *, source: str = "") -> None:
        """The option is a usage error naming it and the far end; nothing is opened."""
        value = GIVEN[option]
        target = self.target(fill=b"untouched" * 1000)
        before = target.read_bytes()
        url = {
            "tcp": "tcp://127.0.0.1:9",  # discard: nothing may connect anyway
            "serial": "serial:///dev/nonexistent-tty",
            "memory": "memory://nobody",
            "file": f"file://{self.tmp}/refused.p2pc",
            "smb": self.samba.url("refused.p2pc"),
            "multicast": "multicast://239.77.255.1?iface=lo",
            "clone": "",
        }[far]
        source = source or str(self.disk)
        with pytest.raises(UsageError) as info:
            if far == "clone":
                opts = {**_base(far, side), option: value}
                sending = SendOptions(**opts) if side == "send" else SendOptions()
                receiving = ReceiveOptions(**opts) if side == "receive" else ReceiveOptions()
                await clone(source, str(target), sending, receiving)
            elif side == "send":
                await send(source, url, SendOptions(**{**_base(far, side), option: value}))
            else:
                await receive(
                    str(target), url, ReceiveOptions(**{**_base(far, side), option: value})
                )
        message = str(info.value)
        assert info.value.exit_code == 2
        assert message.startswith(f"{flag(option)} does not apply to "), message
        name = {"file": "an image (file://)", "smb": "an image (smb://)"}.get(far, f"{far}://")
        if far != "clone":
            assert name in message, message
        assert target.read_bytes() == before
        assert not (self.tmp / "refused.p2pc").exists()
        assert not (self.samba.root / "refused.p2pc").exists()

    # -- the effects: send options ---------------------------------------------------

    async def send_code(self, far: str) -> None:
        ok = await self.go(far, "send")
        _done(ok["tx"])
        short = {"wait": 2.0} if far == "multicast" else {}  # the group's door: 2 s
        wrong = await self.go(far, "send", send_options=short, receive_options={"code": WEAK})
        assert wrong["rx"][0]["exit"] == 3, wrong  # the receiver's code is another one
        assert wrong["tx"]["exit"] in (3, 5), wrong

    async def send_passphrase(self, far: str) -> None:
        url = self.image_url(far)
        _done((await self.go(far, "send", image=url, send_options={"passphrase": "p-one"}))["tx"])
        wrong = await self.go(far, "receive", image=url, receive_options={"passphrase": "p-two"})
        assert wrong["rx"][0]["exit"] == 3, wrong
        right = await self.go(far, "receive", image=url, receive_options={"passphrase": "p-one"})
        _done(right["rx"][0])

    async def send_password(self, far: str) -> None:
        assert far == "smb"
        ok = await self.go(far, "send", send_options={"password": self.samba.password})
        _done(ok["tx"])
        bad = await self.go(far, "send", send_options={"password": "wrong password"})
        assert bad["tx"]["exit"] == 3, bad

    async def send_chunk_size(self, far: str) -> None:
        out = await self.go(far, "send", send_options={"chunk_size": 65536})
        assert _done(out["tx"])["chunks"] == math.ceil(self.size / 65536)

    async def send_exact(self, far: str) -> None:
        mapped = await self.go(far, "send")
        assert _done(mapped["tx"])["free_bytes"] > 4 * MiB  # the ext4's free space
        exact = await self.go(far, "send", send_options={"exact": True})
        assert _done(exact["tx"])["free_bytes"] == 0

    async def send_partitions(self, far: str) -> None:
        await self._choose(far, "send", {"partitions": (1,)})

    async def send_skip(self, far: str) -> None:
        await self._choose(far, "send", {"skip": (2,)})

    async def receive_partitions(self, far: str) -> None:
        await self._choose(far, "receive", {"partitions": (1,)})

    async def receive_skip(self, far: str) -> None:
        await self._choose(far, "receive", {"skip": (2,)})

    async def image_source_partitions(self, far: str) -> None:
        await self._choose(far, "image", {"partitions": (1,)})

    async def image_source_skip(self, far: str) -> None:
        await self._choose(far, "image", {"skip": (2,)})

    async def _choose(self, far: str, side: str, options: dict[str, Any]) -> None:
        """Partition 2 (8 MiB of random bytes) left out: not sent, and a target keeps
        what it had there; partition 1 and the table are copied."""
        from p2pclone.volumes.table import read_table
        from tests.volumes.builders import make_disk

        disk = self.tmp / "two.img"
        if not disk.exists():
            make_disk(disk, self.size, [("ext4", 12 * MiB), ("raw", 8 * MiB)])
        src = disk.read_bytes()
        p1, p2 = read_table(lambda o, n: src[o : o + n], len(src)).partitions
        target = self.target()
        before = target.read_bytes()
        if side == "image":  # an image of the two partitions, read by the sender
            image = self.image_url("file")
            await send(str(disk), image, SendOptions(passphrase=PASSPHRASE))
            out = await self.go(
                far, "send", source=image, targets=[target],
                send_options={**options, "passphrase": PASSPHRASE},
            )  # fmt: skip
        elif side == "send":
            out = await self.go(
                far, "send", source=str(disk), targets=[target], send_options=options
            )
        else:
            out = await self.go(
                far, "receive", source=str(disk), targets=[target], receive_options=options
            )
        done = _done(out["tx"] if side != "receive" else _side(out, far))
        assert done["free_bytes"] >= p2.size, done  # not sent
        if side != "receive" and far in IMAGES:
            return  # saved to an image: nothing written to a disk
        after = target.read_bytes()
        assert after[p2.start : p2.end] == before[p2.start : p2.end]  # left as it was
        assert after[:MiB] == src[:MiB]  # the table (and the gap before partition 1)
        assert after[p1.start : p1.start + 4096] == src[p1.start : p1.start + 4096]

    async def send_allow_mounted(self, far: str) -> None:
        with _mounted_copy(self.disk, self.tmp) as dev:
            refused = await self.go(far, "send", source=dev)
            assert refused["tx"]["exit"] == 4 and "mounted" in refused["tx"]["message"], refused
            allowed = await self.go(far, "send", source=dev, send_options={"allow_mounted": True})
            _done(allowed["tx"])

    async def send_retries(self, far: str) -> None:
        failed = []
        for retries in (0, 3):
            with _failing(self.tmp, self.size, bad=[(MiB + 4096, 512, -1)]) as (disk, log):
                out = await self.go(
                    far, "send", source=str(disk), send_options={"retries": retries}
                )
                assert _unreadable(out["tx"]) == 512
                failed.append(_failed_reads(log))
        assert failed[1] > failed[0], failed  # the retry passes read the bad sector again

    async def send_scrape(self, far: str) -> None:
        lost = []
        for scrape in (False, True):
            # Two bad sectors 64 KiB apart: without scraping, what lies between counts
            # as unreadable, unread; scraping reads it.
            bad = [(MiB, 512, -1), (MiB + 65024, 512, -1)]
            with _failing(self.tmp, self.size, bad=bad) as (disk, _log):
                options = {"scrape": True} if scrape else {}
                out = await self.go(far, "send", source=str(disk), send_options=options)
                lost.append(_unreadable(out["tx"]))
        assert lost == [65536, 1024], lost

    async def send_read_timeout(self, far: str) -> None:
        with _failing(self.tmp, self.size, hang=[(2 * MiB, 4096, 8)]) as (disk, _log):
            out = await self.go(far, "send", source=str(disk), send_options={"read_timeout": 0.5})
        assert _unreadable(out["tx"]) > 0
        assert out["seconds"] < 6  # gave the hung read up, did not wait its 8 s out

    async def send_delta(self, far: str) -> None:
        held = self.disk.read_bytes()
        changed = bytearray(held)
        changed[MiB + 100 : MiB + 110] = b"difference"
        targets = [self.target(bytes(changed)) for _ in range(2 if far == "multicast" else 1)]
        options = {"delta": True, "receivers": 2} if far == "multicast" else {"delta": True}
        out = await self.go(far, "send", targets=targets, send_options=options)
        tx = _done(out["tx"])
        for rx in out["rx"]:
            done = _done(rx)
            assert done["same_chunks"] >= tx["chunks"] - done["zero_chunks"] - 2, done
        assert tx["wire_bytes"] < self.size // 4, tx  # only what differs went out
        assert all(t.read_bytes() == held for t in targets)

    async def send_fresh(self, far: str) -> None:
        url = self.image_url(far)
        await self.go(far, "send", image=url)
        again = _done((await self.go(far, "send", image=url))["tx"])
        assert again["same_chunks"] > 0  # resumed: what the image holds is not sent
        fresh = _done((await self.go(far, "send", image=url, send_options={"fresh": True}))["tx"])
        assert fresh["same_chunks"] == 0  # started over

    async def send_receivers(self, far: str) -> None:
        targets = [self.target(), self.target()]
        out = await self.go(far, "send", targets=targets, send_options={"receivers": 2}, late=0)
        assert [_done(rx) for rx in out["rx"]]
        states = {m.split()[-1] for m in out["members"]}
        assert "joined" in states and "unicast" not in states, out["members"]
        assert sum(m.endswith(" joined") for m in out["members"]) == 2

    async def send_wait(self, far: str) -> None:
        if far == "tcp":
            nobody = await self.go(far, "send", targets=[], send_options={"wait": 0.0}, late=0.1)
            assert nobody["tx"]["exit"] == 5 and nobody["seconds"] < 5, nobody
            late = await self.go(far, "send", send_options={"wait": 20.0}, late=1.5)
            _done(late["tx"])
            _done(late["rx"][0])
        else:  # the door closes after the wait, with the one receiver that came
            out = await self.go(
                far, "send", send_options={"wait": 1.0, "receivers": 2}, targets=[self.target()]
            )
            _done(out["tx"])
            assert out["seconds"] < 30, out

    async def send_limit_rate(self, far: str) -> None:
        await self._limited(far, "send")

    async def receive_limit_rate(self, far: str) -> None:
        await self._limited(far, "receive")

    async def _limited(self, far: str, side: str) -> None:
        """The bytes that crossed took at least as long as the rate allows (a burst of
        50 ms aside), and the side that limits does not go faster than it."""
        out = await self.go(far, side, **{f"{side}_options": {"limit_rate": LIMIT}})
        done = _done(_side(out, far) if side == "receive" else out["tx"])
        assert done["wire_bytes"] > 2 * LIMIT, done  # seconds of it
        assert done["seconds"] >= done["wire_bytes"] / LIMIT - 0.2, done

    # -- an image as SOURCE --------------------------------------------------------

    async def image_source_passphrase(self, far: str) -> None:
        source = await self.image_source("source-pass")
        wrong = await self.go(far, "send", source=source, send_options={"passphrase": "nope"})
        assert wrong["tx"]["exit"] == 3, wrong
        right = {"passphrase": "source-pass"}
        if far in IMAGES:
            right["new_passphrase"] = "source-pass"
        _done((await self.go(far, "send", source=source, send_options=right))["tx"])

    async def image_source_new_passphrase(self, far: str) -> None:
        source = await self.image_source("old-pass")
        url = self.image_url(far)
        options = {"passphrase": "old-pass", "new_passphrase": "new-pass"}
        _done((await self.go(far, "send", source=source, image=url, send_options=options))["tx"])
        old = await self.go(far, "receive", image=url, receive_options={"passphrase": "old-pass"})
        assert old["rx"][0]["exit"] == 3, old
        new = await self.go(far, "receive", image=url, receive_options={"passphrase": "new-pass"})
        _done(new["rx"][0])

    # -- the effects: receive options ------------------------------------------------

    async def receive_code(self, far: str) -> None:
        _done((await self.go(far, "receive"))["rx"][0])
        short = {"wait": 2.0} if far == "multicast" else {}  # the group's door: 2 s
        wrong = await self.go(far, "receive", send_options=short, receive_options={"code": WEAK})
        assert wrong["rx"][0]["exit"] == 3, wrong

    async def receive_passphrase(self, far: str) -> None:
        url = await self._saved(far, "rx-pass")
        bad = await self.go(far, "receive", image=url, receive_options={"passphrase": "nope"})
        assert bad["rx"][0]["exit"] == 3, bad
        ok = await self.go(far, "receive", image=url, receive_options={"passphrase": "rx-pass"})
        _done(ok["rx"][0])

    async def receive_password(self, far: str) -> None:
        url = await self._saved(far)
        ok = await self.go(
            far, "receive", image=url, receive_options={"password": self.samba.password}
        )
        _done(ok["rx"][0])
        bad = await self.go(far, "receive", image=url, receive_options={"password": "wrong"})
        assert bad["rx"][0]["exit"] == 3, bad

    async def receive_yes(self, far: str) -> None:
        short = {"wait": 2.0} if far == "multicast" else {}  # the group's door: 2 s
        asked = await self.go(far, "receive", refuse=True, send_options=short)
        assert _side(asked, far)["exit"] == 4, asked  # the question said no
        _done(_side(await self.go(far, "receive", refuse=True, receive_options={"yes": True}), far))

    async def receive_verify(self, far: str) -> None:
        out = await self.go(far, "receive", receive_options={"verify": True})
        assert _done(_side(out, far))["verified"] is True

    async def receive_delta(self, far: str) -> None:
        held = bytearray(self.disk.read_bytes())
        held[MiB + 100 : MiB + 110] = b"difference"
        out = await self.go(
            far, "receive", targets=[self.target(bytes(held))], receive_options={"delta": True}
        )
        done = _done(_side(out, far))
        assert done["same_chunks"] >= done["chunks"] - done["zero_chunks"] - 2, done

    async def receive_grow(self, far: str) -> None:
        from p2pclone.volumes.table import read_table

        with _loop_target(self.tmp, 2 * self.size) as dev:
            out = await self.go(far, "receive", targets=[Path(dev)], receive_options={"grow": 0})
            _done(_side(out, far))
            fd = os.open(dev, os.O_RDONLY)
            try:
                table = read_table(lambda o, n: os.pread(fd, n, o), 2 * self.size)
            finally:
                os.close(fd)
        assert table.partitions[-1].end > self.size + MiB  # the last partition was grown

    async def receive_proportional(self, far: str) -> None:
        from p2pclone.volumes.table import read_table

        with _loop_target(self.tmp, 2 * self.size) as dev:
            options = {"proportional": True}
            out = await self.go(far, "receive", targets=[Path(dev)], receive_options=options)
            _done(_side(out, far))
            fd = os.open(dev, os.O_RDONLY)
            try:
                table = read_table(lambda o, n: os.pread(fd, n, o), 2 * self.size)
            finally:
                os.close(fd)
        assert table.partitions[-1].end > self.size + MiB  # the one data partition grew

    async def receive_cut(self, far: str) -> None:
        # the disk's tail past its partition is dirty: a smaller target would lose it
        with _loop_target(self.tmp, self.size - 2 * MiB) as dev:
            refused = await self.go(far, "receive", targets=[Path(dev)])
            assert _side(refused, far)["exit"] == 4, refused
            assert "--cut" in _side(refused, far)["message"]
            cut = await self.go(far, "receive", targets=[Path(dev)], receive_options={"cut": True})
            done = _done(_side(cut, far))
        assert done["cut_at"] == self.size - 2 * MiB

    async def receive_new_ids(self, far: str) -> None:
        target = self.target()
        out = await self.go(far, "receive", targets=[target], receive_options={"new_ids": True})
        renamed = _done(_side(out, far))["new_ids"]
        disk, copy = self.disk.read_bytes(), target.read_bytes()
        fs = MiB + 1024 + 0x68  # the ext4's UUID, in its superblock (RFC 4122 order)
        gpt = 512 + 56  # the GPT's disk GUID, in its header (mixed endian)
        assert disk[fs : fs + 16] != copy[fs : fs + 16]
        assert renamed[str(uuid.UUID(bytes=disk[fs : fs + 16]))] == str(
            uuid.UUID(bytes=copy[fs : fs + 16])
        )
        assert renamed[str(uuid.UUID(bytes_le=disk[gpt : gpt + 16]))] == str(
            uuid.UUID(bytes_le=copy[gpt : gpt + 16])
        )

    async def receive_discard(self, far: str) -> None:
        target = self.target()  # random bytes everywhere: nothing is a hole
        out = await self.go(far, "receive", targets=[target], receive_options={"discard": True})
        done = _done(_side(out, far))
        allocated = target.stat().st_blocks * 512
        assert allocated < self.size - done["free_bytes"] // 2, (allocated, done)

    async def receive_fresh(self, far: str) -> None:
        with _failing(self.tmp, self.size, bad=[(MiB + 4096, 512, -1)]) as (disk, _log):
            target = self.target()
            first = _side(await self.go(far, "receive", source=str(disk), targets=[target]), far)
            assert _unreadable(first) == 512, first  # the journal stays for a rerun
            again = await self.go(far, "receive", source=str(disk), targets=[target])
            assert _done(_side(again, far), unreadable=True)["same_chunks"] > 0  # resumed
            fresh = await self.go(
                far, "receive", source=str(disk), targets=[target], receive_options={"fresh": True}
            )
            assert _done(_side(fresh, far), unreadable=True)["same_chunks"] == 0

    async def receive_state_dir(self, far: str) -> None:
        state = self.tmp / "my-state"
        with _failing(self.tmp, self.size, bad=[(MiB + 4096, 512, -1)]) as (disk, _log):
            await self.go(
                far, "receive", source=str(disk), receive_options={"state_dir": str(state)}
            )
        assert list(state.glob("*.journal")), "no journal where --state-dir said"

    async def receive_journal(self, far: str) -> None:
        state = self.tmp / "no-journal"
        state.mkdir()
        with _failing(self.tmp, self.size, bad=[(MiB + 4096, 512, -1)]) as (disk, _log):
            options = {"state_dir": str(state), "journal": False}
            await self.go(far, "receive", source=str(disk), receive_options=options)
        assert not list(state.glob("*.journal"))


# -- helpers ----------------------------------------------------------------------------


def _side(outcome: dict[str, Any], far: str) -> dict[str, Any]:
    """The receiving side's result (a clone's is its only one)."""
    return outcome["tx"] if far == "clone" else outcome["rx"][0]


def _done(result: dict[str, Any] | None, *, unreadable: bool = False) -> dict[str, Any]:
    assert result is not None and "error" not in result, result
    assert unreadable or not result["unreadable"], result
    return result


def _unreadable(result: dict[str, Any] | None) -> int:
    done = _done(result, unreadable=True)
    return sum(n for _o, n in done["unreadable"])


def _failed_reads(log: Path) -> int:
    return sum(line.endswith("EIO") for line in log.read_text().splitlines())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _failing:
    """A failing copy of a random disk (a FUSE file, tests/failing_disk.py)."""

    def __init__(self, tmp: Path, size: int, *, bad=(), hang=()) -> None:
        self.image = tmp / f"failing-{uuid.uuid4().hex[:6]}.img"
        self.image.write_bytes(os.urandom(size))
        self.cm = failing_disk(self.image, list(bad), hang=list(hang))

    def __enter__(self) -> tuple[Path, Path]:
        return self.cm.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.cm.__exit__(*exc)


class _mounted_copy:
    """A copy of the disk as a loop device, its ext4 partition mounted read-write."""

    def __init__(self, disk: Path, tmp: Path) -> None:
        self.copy = tmp / "mounted.img"
        shutil.copyfile(disk, self.copy)
        self.mnt = tmp / "mnt"
        self.mnt.mkdir(exist_ok=True)

    def __enter__(self) -> str:
        self.dev = subprocess.run(
            ["losetup", "--find", "--show", "--partscan", str(self.copy)],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        subprocess.run(["partx", "-a", self.dev], capture_output=True)
        subprocess.run(["mount", f"{self.dev}p1", str(self.mnt)], check=True)
        return self.dev

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", str(self.mnt)], capture_output=True)
        subprocess.run(["losetup", "-d", self.dev], capture_output=True)


class _loop_target:
    def __init__(self, tmp: Path, size: int) -> None:
        self.backing = tmp / f"loop-{uuid.uuid4().hex[:6]}.img"
        with open(self.backing, "wb") as f:
            f.truncate(size)

    def __enter__(self) -> str:
        self.dev = subprocess.run(
            ["losetup", "--find", "--show", str(self.backing)],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        return self.dev

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["losetup", "-d", self.dev], capture_output=True)
