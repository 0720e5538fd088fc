"""Run one command as a subprocess under ``/usr/bin/time -v`` and measure it.

Recorded per run: wall time, user/sys CPU, the peak resident set size that ``/usr/bin/time``
reports (the largest single process of the tree -- GNU time reads ``ru_maxrss``, which is not
summed over forked workers) and, sampled by this module every 0.25 s, the peak of the whole
process tree's summed RSS and summed PSS (proportional set size: shared pages of forked workers
counted once).  A run that exceeds its time bound is killed (whole process group) and recorded
as TIMEOUT; a run whose tree PSS exceeds the memory cap is killed and recorded as MEMCAP, so
that an out-of-memory run cannot take the machine (no swap) down with it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TIME_BIN = "/usr/bin/time"
_SAMPLE_S = 0.25
_PSS_EVERY_S = 1.0


@dataclass
class Measurement:
    """One measured subprocess (JSON-able through :meth:`to_dict`)."""

    status: str  # OK | FAILED | TIMEOUT | MEMCAP | MISSING | SKIPPED | DOES_NOT_FIT | UNAVAILABLE
    cmd: list[str] = field(default_factory=list)
    wall_s: float | None = None
    user_s: float | None = None
    sys_s: float | None = None
    max_rss_mib: float | None = None  # /usr/bin/time -v: largest single process
    tree_rss_peak_mib: float | None = None  # sampled: sum over the process tree
    tree_pss_peak_mib: float | None = None  # sampled: sum of PSS over the process tree
    returncode: int | None = None
    tree_cpu_s: float | None = None  # sampled utime+stime summed over every process seen
    other_load_cores: float | None = None  # mean cores busy with processes not of this run
    stderr_tail: str = ""
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    @property
    def peak_mib(self) -> float | None:
        """The larger of /usr/bin/time's max RSS and the sampled tree PSS."""
        vals = [v for v in (self.max_rss_mib, self.tree_pss_peak_mib) if v is not None]
        return max(vals) if vals else None


def not_run(status: str, note: str, cmd: list[str] | None = None) -> Measurement:
    return Measurement(status=status, cmd=list(cmd or []), note=note)


def _children(pid: int) -> list[int]:
    """pid and all its descendants (from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            continue
    return out


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, ValueError, IndexError):
        return 0


def _cpu_ticks(pid: int) -> int:
    """utime + stime of one process so far (clock ticks)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            f = fh.read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])
    except (OSError, ValueError, IndexError):
        return 0


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return 0
    return 0


class _Sampler(threading.Thread):
    def __init__(self, pid: int, cap_kib: float | None, on_cap: Any) -> None:
        super().__init__(daemon=True)
        self.pid, self.cap_kib, self.on_cap = pid, cap_kib, on_cap
        self.rss_peak = 0
        self.pss_peak = 0
        self.cpu_ticks: dict[int, int] = {}  # last seen utime+stime per process of the tree
        self.capped = False
        self._halt = threading.Event()

    def run(self) -> None:
        last_pss = 0.0
        while not self._halt.is_set():
            pids = _children(self.pid)
            rss = sum(_rss_kib(p) for p in pids)
            for p in pids:
                self.cpu_ticks[p] = max(self.cpu_ticks.get(p, 0), _cpu_ticks(p))
            self.rss_peak = max(self.rss_peak, rss)
            now = time.monotonic()
            over = self.cap_kib is not None and rss > self.cap_kib
            if over or now - last_pss >= _PSS_EVERY_S:
                pss = sum(_pss_kib(p) for p in pids)
                self.pss_peak = max(self.pss_peak, pss)
                last_pss = now
                if self.cap_kib is not None and pss > self.cap_kib and not self.capped:
                    self.capped = True
                    self.on_cap()
            self._halt.wait(_SAMPLE_S)

    def stop(self) -> None:
        self._halt.set()


def _busy_cpu_s() -> float | None:
    """Machine-wide busy CPU seconds so far (/proc/stat: all but idle and iowait)."""
    try:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(f[:8]) - f[3] - f[4]  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def _parse_time(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if m:
        out["max_rss_mib"] = int(m.group(1)) / 1024
    m = re.search(r"User time \(seconds\): ([\d.]+)", text)
    if m:
        out["user_s"] = float(m.group(1))
    m = re.search(r"System time \(seconds\): ([\d.]+)", text)
    if m:
        out["sys_s"] = float(m.group(1))
    return out


def _tail(path: Path, lines: int = 15, chars: int = 3000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])[-chars:]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def run_measured(cmd: list[str], *, log_dir: Path, name: str, timeout: float | None,
                 mem_cap_mib: float | None = None, cwd: Path | None = None,
                 env: dict[str, str] | None = None, stdin_text: str | None = None
                 ) -> tuple[Measurement, str]:
    """Run ``cmd``; return its measurement and its stdout text."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out_p, err_p, time_p = (log_dir / f"{name}.{s}" for s in ("stdout", "stderr", "time"))
    full = [TIME_BIN, "-v", "-o", str(time_p), *cmd] if shutil.which(TIME_BIN) else list(cmd)
    capped = threading.Event()
    busy0 = _busy_cpu_s()
    with open(out_p, "wb") as fo, open(err_p, "wb") as fe:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            full, stdout=fo, stderr=fe, cwd=cwd, env=env, start_new_session=True,
            stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
        )

        def on_cap() -> None:
            capped.set()
            _kill_group(proc)

        sampler = _Sampler(proc.pid, None if mem_cap_mib is None else mem_cap_mib * 1024, on_cap)
        sampler.start()
        if stdin_text is not None and proc.stdin is not None:
            with _suppress_pipe():
                proc.stdin.write(stdin_text.encode())
                proc.stdin.close()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
        except BaseException:  # interrupted harness: leave no orphaned process group
            _kill_group(proc)
            sampler.stop()
            raise
        wall = time.monotonic() - t0
        sampler.stop()
        sampler.join(timeout=5)
    busy1 = _busy_cpu_s()
    rc = proc.returncode
    parsed = _parse_time(time_p.read_text(errors="replace")) if time_p.exists() else {}
    m = Measurement(status="OK", cmd=list(cmd), wall_s=round(wall, 3), returncode=rc,
                    tree_rss_peak_mib=round(sampler.rss_peak / 1024, 1),
                    tree_pss_peak_mib=round(sampler.pss_peak / 1024, 1),
                    **{k: round(v, 3) for k, v in parsed.items()})
    # /usr/bin/time only counts children that were waited for: workers of a process that
    # leaves with os._exit (e.g. a reusable loky pool) are missing there, not in the samples.
    m.tree_cpu_s = round(sum(sampler.cpu_ticks.values()) / os.sysconf("SC_CLK_TCK"), 2)
    own = max(parsed.get("user_s", 0.0) + parsed.get("sys_s", 0.0), m.tree_cpu_s)
    if busy0 is not None and busy1 is not None and wall > 0:
        m.other_load_cores = round(max(0.0, (busy1 - busy0 - own) / wall), 2)
    if timed_out:
        m.status = "TIMEOUT"
        m.note = f"killed after the {timeout:.0f} s time bound"
    elif capped.is_set():
        m.status = "MEMCAP"
        m.note = f"killed: process tree PSS exceeded the {mem_cap_mib:.0f} MiB memory cap"
    elif rc != 0:
        m.status = "FAILED"
        sig = -rc if rc is not None and rc < 0 else None
        if "Command terminated by signal" in (time_p.read_text(errors="replace")
                                              if time_p.exists() else ""):
            sig = int(re.findall(r"terminated by signal (\d+)",
                                 time_p.read_text(errors="replace"))[-1])
        if sig is not None:
            m.note = f"terminated by signal {sig}" + (
                " (SIGKILL: likely the kernel OOM killer)" if sig == 9 else "")
    if m.status != "OK":
        m.stderr_tail = _tail(err_p)
    stdout = out_p.read_text(errors="replace")
    return m, stdout


class _suppress_pipe:
    def __enter__(self) -> None:
        return None

    def __exit__(self, et: Any, ev: Any, tb: Any) -> bool:
        return et is not None and issubclass(et, BrokenPipeError)
