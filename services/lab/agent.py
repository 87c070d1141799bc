"""The resident helper inside a lab node: serves ``lab exec`` and ``ping`` over NATS.

The guest init script starts it once the node's network is up (and restarts it if it dies).
It connects to NATS over the node's management address, through the lab's relay, and answers
request/reply on ``l2.lab.<lab>.<node>.exec`` and ``...ping``. Each request runs in its own
task, so several commands run at once; one process stays resident because starting Python
under user-mode Linux costs seconds.

Configuration comes from the environment the init script exports: ``L2LAB_ID``,
``L2LAB_NODE``, ``L2LAB_ADDR``, ``L2LAB_NATS_URL``, ``L2LAB_NODE_DIR``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time

import msgspec
import nats
from nats.aio.msg import Msg

from shared.runtime import bus
from shared.wire import subjects
from shared.wire.lab_api import MAX_OUTPUT, ExecReply, ExecRequest, PingReply

_STARTED = time.time()


def _cut(data: bytes) -> bytes:
    if len(data) <= MAX_OUTPUT:
        return data
    return data[:MAX_OUTPUT] + b"\n[lab: output cut at %d bytes]\n" % MAX_OUTPUT


async def run_command(req: ExecRequest, *, cwd: str) -> ExecReply:
    """Run one command to completion (or kill its process group at the timeout)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *req.argv,
            stdin=asyncio.subprocess.PIPE if req.stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            start_new_session=True,
        )
    except FileNotFoundError:
        return ExecReply(rc=127, err=f"{req.argv[0]}: command not found\n".encode())
    except OSError as exc:
        return ExecReply(rc=126, err=f"{req.argv[0]}: {exc}\n".encode())
    try:
        out, err = await asyncio.wait_for(proc.communicate(req.stdin or None), req.timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = await proc.communicate()
        note = f"\n[lab: command killed after {req.timeout:g} s]\n".encode()
        return ExecReply(rc=124, out=_cut(out), err=_cut(err) + note)
    rc = proc.returncode if proc.returncode is not None else 255
    if rc < 0:  # killed by a signal: report it the way a shell does
        rc = 128 - rc
    return ExecReply(rc=rc, out=_cut(out), err=_cut(err))


def _meminfo() -> tuple[int, int]:
    total = avail = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key == "MemTotal":
                    total = int(rest.split()[0])
                elif key == "MemAvailable":
                    avail = int(rest.split()[0])
    except OSError:
        pass
    return total, avail


def executor_state(node_dir: str) -> str:
    """ "" when the init script started no executor, else "running" or "exited"."""
    try:
        with open(os.path.join(node_dir, "executor.pid")) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/stat") as f:
            status = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "" if not os.path.exists(os.path.join(node_dir, "executor.pid")) else "exited"
    except (OSError, ValueError, IndexError):
        return "exited"
    return "exited" if status == "Z" else "running"


def _uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


async def serve(*, lab: str, node: str, address: str, url: str, cwd: str) -> None:
    """Connect (retrying until the relay answers) and serve until the process is killed."""

    async def on_error(exc: Exception) -> None:
        # nats-py would log a traceback for every failed attempt: one line is enough.
        print(f"helper: NATS error: {exc!r}", flush=True)

    async def on_disconnected() -> None:
        print("helper: disconnected from NATS", flush=True)

    async def on_reconnected() -> None:
        print("helper: reconnected to NATS", flush=True)

    while True:
        try:
            nc = await nats.connect(
                servers=[url],
                name=f"l2lab-helper-{node}",
                connect_timeout=2,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
            )
            break
        except Exception as exc:  # nats raises several unrelated types for "not reachable"
            print(f"helper: NATS at {url} not reachable yet: {exc}", flush=True)
            await asyncio.sleep(0.5)
    print(f"helper: connected to {url} as {node}", flush=True)
    tasks: set[asyncio.Task[None]] = set()
    decoder = msgspec.json.Decoder(ExecRequest)
    encoder = msgspec.json.Encoder()

    async def do_exec(msg: Msg) -> None:
        try:
            req = decoder.decode(msg.data)
        except msgspec.DecodeError as exc:  # ValidationError too: an unknown field, say
            reply = ExecReply(rc=255, error=f"bad exec request: {exc}")
        else:
            reply = (
                await run_command(req, cwd=cwd)
                if req.argv
                else ExecReply(rc=255, error="bad exec request: empty argv")
            )
        await msg.respond(encoder.encode(reply))

    async def on_exec(msg: Msg) -> None:
        # nats-py runs one subscription's callbacks one after the other: hand each request to
        # its own task so that commands run concurrently.
        task = asyncio.create_task(do_exec(msg))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def on_ping(msg: Msg) -> None:
        total, avail = _meminfo()
        reply = PingReply(
            node=node,
            address=address,
            uptime=_uptime(),
            helper_started=_STARTED,
            mem_total_kb=total,
            mem_available_kb=avail,
            executor=executor_state(cwd),
        )
        await msg.respond(encoder.encode(reply))

    exec_subject = subjects.lab_helper(lab, node, "exec")
    ping_subject = subjects.lab_helper(lab, node, "ping")
    await nc.subscribe(exec_subject, cb=on_exec)
    await nc.subscribe(ping_subject, cb=on_ping)
    await bus.settle(nc)
    print(f"helper: serving {exec_subject} and {ping_subject}", flush=True)
    await asyncio.Event().wait()


def main() -> int:
    """Entry point inside the guest: ``python -m services.lab.agent``."""
    env = os.environ
    try:
        lab, node = env["L2LAB_ID"], env["L2LAB_NODE"]
        address, url = env["L2LAB_ADDR"], env["L2LAB_NATS_URL"]
    except KeyError as exc:
        print(f"helper: missing environment variable {exc}", file=sys.stderr)
        return 2
    cwd = env.get("L2LAB_NODE_DIR", "/")
    asyncio.run(serve(lab=lab, node=node, address=address, url=url, cwd=cwd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
