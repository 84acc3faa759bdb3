"""serial://DEVICE[?baud=N&rtscts=0|1] — a null-modem or USB-serial cable.

Both ends open their port the same way (pyserial: 8N1, raw, no XON/XOFF, optional
RTS/CTS), and the link layer (:mod:`transports.seriallink`) turns the lossy byte line
into a reliable ``trio.abc.HalfCloseableStream``; the p2pclone protocol above it is the
same as over TCP.  The receiver's "listen" just opens its port and waits for the
sender's first frame.

The port's file descriptor is driven from trio without blocking the event loop:
``wait_readable``/``wait_writable`` and non-blocking ``os.read``/``os.write``.  A
non-blocking tty read may return 0 bytes (trio issue #549): that is "nothing now",
never end of file — a serial line has no end of file; the end of a transfer is a
protocol frame, and a dead peer is found by the link layer's timeout.
"""

from __future__ import annotations

import errno
import operator
import os
from urllib.parse import parse_qs

import trio

from p2pclone.errors import TransportError, UsageError

from . import Dial, LinkListener, Listen, Transport, split_url
from .seriallink import Link

DEFAULT_BAUD = 115200
#: Keep at most this much written-but-unsent data in the OS: frames are timed from
#: the moment they leave us, so a deep OS queue would look like a slow peer.
OS_QUEUE = 4096
#: send_all() returns once the link's unframed backlog is below this.
BACKLOG = 64 * 1024


def open_port(path: str, baud: int, rtscts: bool) -> int:
    """Open and configure the port with pyserial; return its non-blocking fd."""
    import serial  # pyserial

    try:
        port = serial.Serial(
            path,
            baudrate=baud,
            bytesize=serial.EIGHTBITS,
            parity=serial.PARITY_NONE,
            stopbits=serial.STOPBITS_ONE,
            xonxoff=False,
            rtscts=rtscts,
            timeout=0,
            exclusive=True,
        )
    except (serial.SerialException, ValueError) as exc:
        raise TransportError(
            f"cannot open the serial port {path} ({exc}): check the device name, that "
            "nothing else uses it, and your permissions (the dialout group)"
        ) from None
    fd = os.dup(port.fileno())
    port.close()  # termios settings stay with the device; we keep our own descriptor
    os.set_blocking(fd, False)
    return fd


def _first_error(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


class SerialStream(trio.abc.HalfCloseableStream):
    """A reliable stream over a serial fd, pumped by two tasks (reader, writer)."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name
        self.link = Link(now=trio.current_time())
        self._changed = trio.Event()
        self._error: BaseException | None = None
        self._closed = False
        self._eof_sent = False
        self._sending = False
        self._receiving = False
        self._wbuf = bytearray()
        self._scope = trio.CancelScope()
        self._done = trio.Event()

    async def start(self) -> None:
        trio.lowlevel.spawn_system_task(self._run)

    async def _run(self) -> None:
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._reader)
                    nursery.start_soon(self._writer)
        except BaseException as exc:  # noqa: BLE001 - a system task must never raise:
            if not self._closed:  # its failure is reported to the stream's users instead
                self._error = _first_error(exc)
        finally:
            self._done.set()
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _reader(self) -> None:
        while True:
            await trio.lowlevel.wait_readable(self.fd)
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno != errno.EIO:  # EIO: a pty with nobody on the other side yet
                    raise
                data = b""
            if not data:  # not EOF on a tty: nothing to read now (trio #549)
                await trio.sleep(0.01)
                continue
            self.link.receive_line(data, trio.current_time())
            self._notify()

    async def _writer(self) -> None:
        while True:
            now = trio.current_time()
            if len(self._wbuf) < OS_QUEUE:
                self._wbuf += self.link.data_to_send(now)
            else:  # the line is not draining: the peer may be gone
                self.link.check_alive(now)
            if self._wbuf:
                try:
                    n = os.write(self.fd, self._wbuf[:OS_QUEUE])
                except BlockingIOError:
                    n = 0
                if n:
                    del self._wbuf[:n]
                    self._notify()
                    await trio.lowlevel.checkpoint()
                    continue
                # The port is full: wait for room, but not past the point where a
                # silent peer counts as dead (a port that never drains must not hide it).
                with trio.move_on_at(self.link.dead_at):
                    await trio.lowlevel.wait_writable(self.fd)
                continue
            with trio.move_on_at(self.link.next_deadline(now)):
                await self._changed.wait()

    def _check(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the serial stream is closed")
        if self._error is not None:
            raise trio.BrokenResourceError(
                f"the serial link on {self.name} failed: {self._error}"
            ) from self._error

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        self._sending = True
        try:
            self._check()
            if self._eof_sent:
                raise trio.ClosedResourceError("send_all() after send_eof()")
            self.link.send(data)
            self._notify()
            while self.link.buffered > BACKLOG:
                await self._wait()
            await trio.lowlevel.checkpoint()
        finally:
            self._sending = False

    def delivered(self) -> int:
        """Bytes given to ``send_all`` that the far end has acknowledged."""
        return self.link.acknowledged

    async def _wait(self) -> None:
        event = self._changed
        self._check()
        await event.wait()
        self._check()

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        self._sending = True
        try:
            self._check()
            while self.link.buffered > BACKLOG:
                await self._wait()
            await trio.lowlevel.checkpoint()
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        self._check()
        if not self._eof_sent:
            self._eof_sent = True
            self.link.finish()
            self._notify()
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        self._receiving = True
        try:
            self._check()
            while not self.link.readable and not self.link.eof:
                await self._wait()
            await trio.lowlevel.checkpoint()
            return self.link.read(max_bytes or 65536)
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        # Tell the peer we are done (it reads end-of-stream), let what we sent be
        # acknowledged (bounded: the peer may be gone), then stop pumping.
        if not self._eof_sent and self._error is None:
            self._eof_sent = True
            self.link.finish()
            self._notify()
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            while self._error is None and not self.link.idle:
                event = self._changed
                await event.wait()
        self._closed = True
        self._scope.cancel()
        with trio.CancelScope(shield=True):
            await self._done.wait()
        trio.lowlevel.notify_closing(self.fd)
        os.close(self.fd)
        await trio.lowlevel.checkpoint()


class SerialListener(LinkListener):
    def __init__(self, transport: SerialTransport) -> None:
        self.transport = transport
        self.url = transport.url

    async def accept(self) -> trio.abc.Stream:
        return await self.transport.open()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class SerialTransport(Transport):
    scheme = "serial"
    #: 256 KiB: at 115200 baud a 1 MiB chunk of incompressible data is 90 s of line
    #: time, too long between two progress steps or two resumable commits.
    chunk_size = 256 * 1024

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parts = split_url(url, "write serial:///dev/ttyUSB0[?baud=921600]")
        if parts.netloc or not parts.path:
            raise UsageError(
                f"bad serial URL {url!r}: write serial:///dev/ttyUSB0[?baud=921600] "
                "(three slashes: the device is a path)"
            )
        self.path = parts.path
        query = parse_qs(parts.query)
        unknown = set(query) - {"baud", "rtscts"}
        if unknown:
            raise UsageError(f"bad serial URL {url!r}: unknown option {sorted(unknown)[0]!r}")
        try:
            self.baud = int(query.get("baud", [DEFAULT_BAUD])[0])
            self.rtscts = query.get("rtscts", ["0"])[0] in ("1", "true", "yes")
        except ValueError:
            raise UsageError(f"bad serial URL {url!r}: baud must be a number") from None

    async def connect(self, dial: Dial) -> trio.abc.Stream:
        return await self.open()

    async def open(self) -> SerialStream:
        """The port, opened: both ends do the same."""
        fd = await trio.to_thread.run_sync(open_port, self.path, self.baud, self.rtscts)
        stream = SerialStream(fd, self.path)
        await stream.start()
        return stream

    async def listen(self, how: Listen) -> LinkListener:
        await trio.lowlevel.checkpoint()
        return SerialListener(self)
