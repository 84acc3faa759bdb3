"""Helper run inside a test namespace: ``send GROUP PORT IFADDR N`` multicasts N data-plane
fragments; ``recv GROUP PORT IFADDR`` prints the fragment numbers it got as JSON once
nothing has arrived for a second (it signals readiness by printing "ready")."""

from __future__ import annotations

import json
import socket
import struct
import sys
import time

from p2pclone.protocol.dataplane import DatagramError, Fragment, split


def main() -> None:
    mode, group, port, ifaddr = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    if mode == "send":
        n = int(sys.argv[5])
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(ifaddr))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        for k, frag in enumerate(split(42, 0, bytes(n * 1400))):
            s.sendto(frag.encode(), (group, port))
            if k % 64 == 63:
                time.sleep(0.002)  # ~45 MB/s: the test is about loss, not speed
        return
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((group, port))
    mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(ifaddr))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    print("ready", flush=True)
    got: set[int] = set()
    s.settimeout(10)
    while True:
        try:
            data = s.recv(2048)
        except TimeoutError:
            break
        s.settimeout(1)
        try:
            got.add(Fragment.decode(data, 42).index)
        except DatagramError:
            continue
    print(json.dumps(sorted(got)), flush=True)


if __name__ == "__main__":
    main()
