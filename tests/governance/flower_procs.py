"""Real Flower processes on 127.0.0.1 for governance tests: start, wait, stop (only what we started)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def flower_env(flwr_home: Path) -> dict[str, str]:
    """PATH must reach flower-superexec (the SuperLink/SuperNode spawn it); FLWR_HOME isolates the test."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "FLWR_HOME": str(flwr_home)}


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, needle: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return True
            if self.popen.poll() is not None:
                return needle in self.text()
            time.sleep(0.2)
        return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal our own process group (the process and the helpers it spawned), then reap it."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)


@dataclass
class Cluster:
    """Processes started by one test; stop_all() ends exactly those."""

    workdir: Path
    flwr_home: Path
    procs: list[Proc] = field(default_factory=list)

    def start(self, name: str, argv: list[str]) -> Proc:
        log = self.workdir / f"{name}.log"
        handle = open(log, "wb")  # noqa: SIM115 - closed when the process is reaped with the test dir
        popen = subprocess.Popen(
            argv, stdout=handle, stderr=subprocess.STDOUT, cwd=self.workdir, env=flower_env(self.flwr_home),
            start_new_session=True,
        )  # fmt: skip
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def superlink(self, port: int, extra: list[str]) -> Proc:
        proc = self.start(
            "superlink", [str(BIN / "flower-superlink"), "--host", "127.0.0.1", "--port", str(port), *extra]
        )
        if not proc.wait_for("Uvicorn running on", 60):
            raise RuntimeError("SuperLink did not start:\n" + proc.text()[-3000:])
        return proc

    def supernode_argv(self, link_port: int, extra: list[str]) -> list[str]:
        return [
            str(BIN / "flower-supernode"),
            "--superlink",
            f"127.0.0.1:{link_port}",
            "--port",
            str(free_port()),
            *extra,
        ]

    def supernode(self, name: str, link_port: int, extra: list[str]) -> Proc:
        return self.start(name, self.supernode_argv(link_port, extra))

    def rejoin_supernode(self, name: str, link_port: int, extra: list[str]) -> Proc:
        """Restart a crashed site the way an operator would: retry until the SuperLink re-admits it."""
        from fedomop.federated.faults import start_supernode_rejoining

        log = self.workdir / f"{name}.log"
        argv = self.supernode_argv(link_port, extra)
        popen = start_supernode_rejoining(argv, log=log, env=flower_env(self.flwr_home), cwd=self.workdir)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        """SIGTERM every group we started at once (SuperNodes take seconds to leave), then reap."""
        for proc in self.procs:
            if proc.popen.poll() is None:
                try:
                    os.killpg(proc.popen.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in reversed(self.procs):
            proc.stop()
