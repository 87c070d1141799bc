"""The lab's relay: host-side services (NATS, OTLP) made reachable from inside the lab.

One detached process per lab, started by ``lab up``. For each relay it creates the listening
socket while switched into the lab's network namespace (pyroute2 ``netns.pushns``; a socket
keeps the namespace it was created in), bound to the gateway address on the mgmt switch
side, then switches back: every accepted connection is joined to a new connection from the
root namespace to the host-side target (``127.0.0.1:PORT`` for the embedded NATS). Nothing
listens in the root namespace.

With a management VLAN, the nodes' mgmt frames are 802.1Q-tagged, and the host kernel may
have no 8021q. The relay then also runs a small VLAN translator between two taps the lab
created in its namespace: the switch-side tap (a port of ``sw-mgmt``) and the address-side
tap (holding the gateway address). Frames tagged with the mgmt VID are untagged towards the
address side; frames from the address side are tagged; everything else is dropped, so the
gateway is reachable on the mgmt VLAN only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import socket
import struct
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec


class Listener(msgspec.Struct, kw_only=True):
    """One relay: ``listen`` inside the lab namespace, ``target`` from the root namespace."""

    name: str
    listen_host: str
    listen_port: int
    target_host: str
    target_port: int


class VlanBridge(msgspec.Struct, kw_only=True):
    """The VLAN translator: tagged on ``switch_tap``, untagged on ``address_tap``."""

    vid: int
    switch_tap: str
    address_tap: str


class RelayConfig(msgspec.Struct, kw_only=True):
    """What one relay process serves; written as JSON by ``lab up``."""

    netns: str
    listeners: list[Listener]
    ready_file: str
    vlan: VlanBridge | None = None


TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
ETH_P_8021Q = 0x8100


def open_tap(name: str) -> int:
    """Attach to the existing tap ``name`` (in the current namespace); returns its fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    ifr = struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI)
    fcntl.ioctl(fd, TUNSETIFF, ifr)
    return fd


def untag(frame: bytes, vid: int) -> bytes | None:
    """The frame without its 802.1Q tag if it is tagged with ``vid``; else None (dropped)."""
    if len(frame) < 18 or int.from_bytes(frame[12:14], "big") != ETH_P_8021Q:
        return None
    if int.from_bytes(frame[14:16], "big") & 0x0FFF != vid:
        return None
    return frame[:12] + frame[16:]


def tag(frame: bytes, vid: int) -> bytes | None:
    """The frame with an 802.1Q tag for ``vid`` inserted (priority 0); None if too short."""
    if len(frame) < 14:
        return None
    return frame[:12] + struct.pack("!HH", ETH_P_8021Q, vid & 0x0FFF) + frame[12:]


def _pump(src: int, dst: int, convert: Callable[[bytes, int], bytes | None], vid: int) -> None:
    """Move every frame waiting on tap ``src`` to tap ``dst`` through ``convert``."""
    while True:
        try:
            frame = os.read(src, 65536)
        except BlockingIOError:
            return
        except OSError:
            return
        out = convert(frame, vid)
        if out is not None:
            # A full queue or a tap not up yet: drop the frame, as a switch would.
            with contextlib.suppress(OSError):
                os.write(dst, out)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction until end of stream, then pass the half-close on; a connection
    reset (a process killed with unread data) is passed on as a close, or the other end
    would keep a dead client (a NATS server: its subscriptions, answering nothing)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        writer.close()
        return
    with contextlib.suppress(ConnectionError, OSError):
        if writer.can_write_eof():
            writer.write_eof()


async def join(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    """Relay both directions of two connections until both ends are done, then close."""
    try:
        await asyncio.gather(_pipe(a[0], b[1]), _pipe(b[0], a[1]))
    finally:
        for writer in (a[1], b[1]):
            with contextlib.suppress(OSError):
                writer.close()


ClientHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(cfg: RelayConfig) -> None:
    from pyroute2 import netns  # imported here: only the relay process needs it

    socks: list[tuple[Listener, socket.socket]] = []
    tap_fds: tuple[int, int] | None = None
    netns.pushns(cfg.netns)
    try:
        for lst in cfg.listeners:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((lst.listen_host, lst.listen_port))
            s.listen(128)
            s.setblocking(False)
            socks.append((lst, s))
        if cfg.vlan is not None:
            tap_fds = (open_tap(cfg.vlan.switch_tap), open_tap(cfg.vlan.address_tap))
    finally:
        netns.popns()

    loop = asyncio.get_running_loop()
    if tap_fds is not None and cfg.vlan is not None:
        sw, addr = tap_fds
        vid = cfg.vlan.vid
        loop.add_reader(sw, _pump, sw, addr, untag, vid)
        loop.add_reader(addr, _pump, addr, sw, tag, vid)

    def handler(lst: Listener) -> ClientHandler:
        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                # Created after popns: this socket lives in the root namespace.
                target = await asyncio.open_connection(lst.target_host, lst.target_port)
            except OSError as exc:
                print(f"relay {lst.name}: cannot reach target: {exc}", flush=True)
                writer.close()
                return
            await join((reader, writer), target)

        return on_client

    servers = [await asyncio.start_server(handler(lst), sock=s) for lst, s in socks]
    for lst, _ in socks:
        print(
            f"relay {lst.name}: {cfg.netns} {lst.listen_host}:{lst.listen_port} -> "
            f"{lst.target_host}:{lst.target_port}",
            flush=True,
        )
    Path(cfg.ready_file).write_text(str(os.getpid()))
    await asyncio.gather(*(srv.serve_forever() for srv in servers))


def main(argv: list[str] | None = None) -> int:
    """``python -m services.lab.relay CONFIG.json`` (started detached by ``lab up``)."""
    parser = argparse.ArgumentParser(prog="l2net-lab-relay")
    parser.add_argument("config", type=Path)
    args = parser.parse_args(argv)
    cfg = msgspec.json.decode(args.config.read_bytes(), type=RelayConfig)
    asyncio.run(_serve(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
