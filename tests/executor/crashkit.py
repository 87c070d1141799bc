"""Executors that die on purpose inside a lab node, restarted in a blink.

Starting Python in a user-mode Linux node costs seconds, so a resident **driver** runs in
the node (``python -m tests.executor.crashkit DIR``): it imports the executor once, then
forks a real executor process (the ``python -m services.executor`` entry point, with the
lab's own command line) for each run the test asks for, with extra environment variables
(``L2NET_TEST_CRASH_AT`` makes it SIGKILL itself inside a step; ``L2NET_TEST_FAIL_AT`` makes
its ``before_step`` hook raise at a step). It also dumps the node's whole L2 state.

The test and the driver talk through files in ``DIR`` (the node's directory, on the host's
file system, which the node mounts): ``cmd-N.json`` asks, ``out-N.json`` answers, and
``exit-R`` tells how executor run ``R`` ended.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

FAIL_ENV = "L2NET_TEST_FAIL_AT"


# -- in the node -------------------------------------------------------------------------


def _dump() -> dict[str, Any]:
    """The node's L2 state, comparable across runs: VM NIC veths by their VM NIC (the CNI
    plugin names them at random), no MACs of bridges, veths, VLAN devices (they follow random veth
    MACs), plus the namespaces' files, l2net's records and what is inside each VM."""
    from services.executor import kernel as k
    from services.executor.dump import comparable
    from shared.domain.l2state import is_vm_port, parse_alias

    async def read() -> dict[str, Any]:
        kern = k.NetlinkKernel("dump")
        try:
            state = await kern.read()
        finally:
            await kern.close()
        data = msgspec.to_builtins(comparable(state))
        links: dict[str, Any] = {}
        renamed: dict[str, str] = {}
        for name, link in state.links.items():
            if is_vm_port(link):
                fields = parse_alias(link.alias) or {}
                renamed[name] = f"vm:{fields.get('vm')}/{fields.get('if')}"
        for name, link in data["links"].items():
            if link.get("kind") in ("bridge", "veth", "vlan"):
                link.pop("mac", None)
            link["name"] = renamed.get(name, name)
            links[link["name"]] = link
        data["links"] = dict(sorted(links.items()))
        data["vlans"] = dict(sorted((renamed.get(n, n), v) for n, v in data["vlans"].items()))
        files = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
        data["netnsFiles"] = files
        data["records"] = k.owned_namespaces(os.environ.get("L2NET_NODE", ""))
        data["inside"] = {ns: sorted(k.netns_links(ns)) for ns in files}
        return data

    return asyncio.run(read())


def _child(run: int, env: dict[str, str], directory: Path) -> None:
    """The forked executor process: the lab's executor command line, extra environment."""
    from services.executor import __main__ as entry
    from services.lab.fleet import executor_command
    from tests import keys

    log = os.open(directory / f"executor-{run}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.environ.update(env)
    if os.environ.get(FAIL_ENV):
        _inject_failures(directory)
    argv = executor_command(
        node=os.environ["L2NET_NODE"],
        nats_url=os.environ["NATS_URL"],
        mgmt_vlan=int(os.environ["L2LAB_MGMT_VLAN"]) if os.environ.get("L2LAB_MGMT_VLAN") else None,
        state_dir=os.path.join(os.environ["L2NET_STATE_DIR"], "executor-state"),
        trust_keys=[keys.PUBLIC],
    )
    code = 1
    try:
        code = entry.main(argv[3:])  # after "python -m services.executor"
    except SystemExit as exc:  # argparse and the CLI's own refusals
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()  # os._exit flushes nothing: the log must say why it ended
        os._exit(code)


def _inject_failures(directory: Path) -> None:
    """This executor's ``before_step`` hook raises at step K of the apply of generation G
    when the file ``fail-G.json`` (``{"step": K}``) exists: one executor serves many cases."""
    from services.executor.kernel import KernelError
    from services.executor.planning import Step
    from services.executor.service import Executor
    from shared.domain.model import NodeIntent, NodeStatus

    plan: dict[str, int] = {"step": -1, "count": 0}
    init = Executor.__init__
    apply = Executor._apply

    async def fail(step: Step) -> None:
        index = plan["count"]
        plan["count"] += 1
        if index == plan["step"]:
            raise KernelError(step, f"injected failure at step {index}")

    def with_hook(self: Executor, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.before_step = fail

    async def counting(self: Executor, intent: NodeIntent) -> NodeStatus:
        path = directory / f"fail-{intent.generation}.json"
        plan["step"] = json.loads(path.read_text())["step"] if path.exists() else -1
        plan["count"] = 0
        return await apply(self, intent)

    Executor.__init__ = with_hook  # type: ignore[method-assign]
    Executor._apply = counting  # type: ignore[method-assign]


def write(path: Path, data: object) -> None:
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(data))
    os.replace(temp, path)


def serve(directory: Path) -> None:
    """The driver's loop: answer ``cmd-N.json`` files, reap executor runs."""
    # Imported once here, so that forked executors start at once.
    import services.executor.__main__
    import services.executor.dump
    import services.lab.fleet  # noqa: F401

    children: dict[int, int] = {}  # pid -> run
    done: set[str] = set()
    write(directory / "ready.json", {"pid": os.getpid()})
    while True:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            run = children.pop(pid, None)
            if run is not None:
                how = (
                    f"signal {os.WTERMSIG(status)}"
                    if os.WIFSIGNALED(status)
                    else f"exit {os.WEXITSTATUS(status)}"
                )
                write(directory / f"exit-{run}.json", {"how": how})
        for name in sorted(os.listdir(directory)):
            if not (name.startswith("cmd-") and name.endswith(".json")) or name in done:
                continue
            done.add(name)
            cmd = json.loads((directory / name).read_text())
            out: dict[str, Any] = {}
            if cmd["op"] == "start":
                pid = os.fork()
                if pid == 0:
                    _child(cmd["run"], cmd.get("env", {}), directory)
                children[pid] = cmd["run"]
                out = {"pid": pid}
            elif cmd["op"] in ("stop", "kill"):
                sig = signal.SIGTERM if cmd["op"] == "stop" else signal.SIGKILL
                for pid, run in children.items():
                    if run == cmd["run"]:
                        os.kill(pid, sig)
            elif cmd["op"] == "dump":
                out = {"dump": _dump()}
            elif cmd["op"] == "quit":
                for pid in children:
                    os.kill(pid, signal.SIGKILL)
                write(directory / name.replace("cmd-", "out-"), out)
                return
            write(directory / name.replace("cmd-", "out-"), out)
        time.sleep(0.05)


# -- on the host -------------------------------------------------------------------------


class Driver:
    """The test's side of a driver running in ``node`` (see module)."""

    def __init__(self, lab: Any, node: str, directory: Path) -> None:
        self.lab = lab
        self.node = node
        self.dir = directory
        self._n = 0
        self._run = 0
        self.slow_stops = 0

    async def start_driver(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in self.dir.iterdir():
            old.unlink()
        repo = Path(__file__).resolve().parents[2]
        script = (
            f"cd {repo} && exec {sys.executable} -m tests.executor.crashkit {self.dir}"
            f" > {self.dir}/driver.log 2>&1 < /dev/null"
        )
        rc, _, err = await self.lab.aexec(self.node, ["sh", "-c", f"({script}) &"], timeout=30)
        assert rc == 0, err
        await self._wait(self.dir / "ready.json", 120)

    async def _wait(self, path: Path, timeout: float) -> dict[str, Any]:
        from tests.kit import until  # the host's side only: the node's driver needs no pytest

        def no_answer() -> str:
            driver_log = self.dir / "driver.log"
            log = driver_log.read_text() if driver_log.exists() else ""
            return f"{path.name}: no answer from the driver\n{log[-2000:]}"

        await until(path.exists, timeout=timeout, what=no_answer, every=0.05)
        result: dict[str, Any] = json.loads(path.read_text())
        return result

    async def _ask(self, cmd: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
        self._n += 1
        write(self.dir / f"cmd-{self._n:05d}.json", cmd)
        return await self._wait(self.dir / f"out-{self._n:05d}.json", timeout)

    async def start(self, env: dict[str, str] | None = None) -> int:
        """Fork an executor run; its number."""
        self._run += 1
        await self._ask({"op": "start", "run": self._run, "env": env or {}})
        return self._run

    def ended(self, run: int) -> str | None:
        """How run ``run`` ended (``signal 9``, ``exit 0``), None while it runs."""
        path = self.dir / f"exit-{run}.json"
        return str(json.loads(path.read_text())["how"]) if path.exists() else None

    async def wait_end(self, run: int, timeout: float = 120) -> str:
        data = await self._wait(self.dir / f"exit-{run}.json", timeout)
        return str(data["how"])

    async def stop(self, run: int) -> str:
        """SIGTERM, then SIGKILL when the run has not ended 5 s later (how it stops is not
        what these tests are about: they stop it only when it is idle)."""
        await self._ask({"op": "stop", "run": run})
        deadline = time.monotonic() + 5
        while self.ended(run) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.ended(run) is None:
            self.slow_stops += 1
            await self._ask({"op": "kill", "run": run})
        return await self.wait_end(run)

    async def dump(self) -> dict[str, Any]:
        return (await self._ask({"op": "dump"}))["dump"]  # type: ignore[no-any-return]

    async def quit(self) -> None:
        await self._ask({"op": "quit"}, timeout=30)

    def log(self, run: int) -> str:
        path = self.dir / f"executor-{run}.log"
        return path.read_text()[-3000:] if path.exists() else ""


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
