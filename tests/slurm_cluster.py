"""A one-machine Slurm cluster for tests: munged, slurmctld and slurmd on 127.0.0.1, stopped by PID.

Everything lives in a private folder: its own munge key and socket, its own ports and state,
and a slurm.conf that clients find through ``SLURM_CONF`` (``cluster.env``) and, inside jobs,
through a link at the default path: the Slurm executor's job step drops ``SLURM_CONF`` before
its own ``srun``. Debian's ``munge slurmctld slurmd slurm-client`` packages provide the
programs; it runs as root, on a machine with no Slurm configuration of its own.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DEFAULT_CONF = Path("/etc/slurm/slurm.conf")
PROGRAMS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel")


def missing_requirements() -> list[str]:
    """Slurm and munge programs this machine lacks (the cluster needs all of them, and root)."""
    missing = [name for name in PROGRAMS if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]
    if os.geteuid() != 0:
        missing.append("root privileges")
    if DEFAULT_CONF.exists() or DEFAULT_CONF.is_symlink():
        missing.append(f"a machine without {DEFAULT_CONF}")
    return missing


def _program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SlurmCluster:
    """Start with ``start()``, stop with ``stop()``; ``env`` is the environment for Slurm clients and jobs."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="gdis-slurm-"))
        self.root.chmod(0o755)  # the munge user reaches its folder through this one
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.daemons: dict[str, subprocess.Popen] = {}

    def start(self, timeout: float = 60) -> None:
        munge_dir = self.root / "munge"
        munge_dir.mkdir(mode=0o700)
        subprocess.run([_program("mungekey"), "--create", "--keyfile", str(munge_dir / "munge.key")], check=True)
        socket_dir = self.root / "munge-socket"
        socket_dir.mkdir(mode=0o755)  # clients (any user) must reach the socket
        munge_user = pwd.getpwnam("munge")
        for path in (munge_dir, munge_dir / "munge.key", socket_dir):
            os.chown(path, munge_user.pw_uid, munge_user.pw_gid)
        socket_path = socket_dir / "munge.socket"
        self._spawn("munged", [_program("munged"), "--foreground", "--key-file", str(munge_dir / "munge.key"),
                               "--socket", str(socket_path), "--pid-file", str(munge_dir / "munged.pid"),
                               "--log-file", str(munge_dir / "munged.log"),
                               "--seed-file", str(munge_dir / "munged.seed")], user="munge")
        self._wait(socket_path.exists, timeout, "the munge socket")
        self.conf.write_text(self._slurm_conf(socket_path))
        DEFAULT_CONF.parent.mkdir(parents=True, exist_ok=True)
        DEFAULT_CONF.symlink_to(self.conf)
        self._spawn("slurmctld", [_program("slurmctld"), "-D", "-f", str(self.conf)])
        self._spawn("slurmd", [_program("slurmd"), "-D", "-f", str(self.conf), "-N", self.node])
        self._wait(self._node_idle, timeout, "the node to become idle")

    def stop(self) -> None:
        """Cancel leftover jobs, then stop slurmd, slurmctld and munged by the PIDs this object started.

        Jobs go first: their slurmstepd processes are not slurmd's children and would outlive it.
        """
        if "slurmctld" in self.daemons:
            subprocess.run(["scancel", "--full", "--partition", "debug"], env=self.env, capture_output=True, timeout=30)
            deadline = time.monotonic() + 60
            while self._active_jobs() and time.monotonic() < deadline:
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.daemons.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if DEFAULT_CONF.is_symlink() and DEFAULT_CONF.readlink() == self.conf:
            DEFAULT_CONF.unlink()
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- internals --------------------------------------------------------------------------
    def _spawn(self, name: str, command: list[str], user: str | None = None) -> None:
        log = (self.root / f"{name}.out").open("w")
        self.daemons[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, user=user,
                                              env=self.env, start_new_session=True)

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, process in self.daemons.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited ({process.returncode}) while waiting for {what}: "
                                       f"{(self.root / f'{name}.out').read_text()[-2000:]}{self.log(name)[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}; slurmctld log: {self.log('slurmctld')[-2000:]}")
            time.sleep(0.2)

    def _active_jobs(self) -> bool:
        listed = subprocess.run(["squeue", "-h", "--states=running,completing,configuring", "-o", "%i"],
                                env=self.env, capture_output=True, text=True)
        return bool(listed.stdout.strip())

    def _node_idle(self) -> bool:
        state = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True)
        return state.stdout.strip() == "idle"

    def _slurm_conf(self, munge_socket: Path) -> str:
        self.node = socket.gethostname().split(".")[0]
        hardware = subprocess.run([_program("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
        node_line = next(line for line in hardware.splitlines() if line.startswith("NodeName="))
        node_line = re.sub(r"^NodeName=\S+", f"NodeName={self.node}", node_line)
        memory = int(re.search(r"RealMemory=(\d+)", node_line).group(1))
        node_line = re.sub(r"RealMemory=\d+", f"RealMemory={memory // 2}", node_line)  # leave room for the rest
        root = self.root
        return "\n".join([
            "ClusterName=gdistest",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={munge_socket},cred_expire=30",  # also how long a requeued job waits
            f"StateSaveLocation={root}/state",
            f"SlurmdSpoolDir={root}/spool",
            f"SlurmctldPidFile={root}/slurmctld.pid",
            f"SlurmdPidFile={root}/slurmd.pid",
            f"SlurmctldLogFile={root}/slurmctld.log",
            f"SlurmdLogFile={root}/slurmd.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/affinity",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "MpiDefault=none",
            "ReturnToService=2",
            "MinJobAge=300",  # finished jobs stay visible to squeue, which the profile polls
            "MailProg=/bin/true",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            f"{node_line} NodeAddr=127.0.0.1 State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ])
