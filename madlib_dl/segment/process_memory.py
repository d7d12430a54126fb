"""How much memory this process holds, from /proc/self/status (Linux).

A PostgreSQL backend's resident set also counts the pages of shared_buffers it has touched; those belong
to the server's cache, not to the backend, so ``shared`` is reported apart and ``own``/``own_peak``
leave it out. ``own_peak`` is the kernel's high-water mark (VmHWM) minus the shared pages touched so far:
shared pages only accumulate in a backend, so this never overstates the backend's own peak by more
than the shared pages it touched after that peak."""

from __future__ import annotations

from dataclasses import dataclass

FIELDS = {"VmRSS": "rss", "VmHWM": "peak", "RssShmem": "shared"}


@dataclass(frozen=True)
class ProcessMemory:
    rss: int     # resident bytes now
    peak: int    # highest resident bytes since the process started
    shared: int  # resident bytes of shared memory (PostgreSQL's shared_buffers in a backend)

    @property
    def own(self) -> int:
        return max(0, self.rss - self.shared)

    @property
    def own_peak(self) -> int:
        return max(0, self.peak - self.shared)


def parse_status(text: str) -> ProcessMemory:
    """The fields of a /proc/<pid>/status text (values in kB); a missing field reads as 0."""
    values = dict.fromkeys(FIELDS.values(), 0)
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in FIELDS:
            values[FIELDS[name]] = int(rest.split()[0]) * 1024
    return ProcessMemory(**values)


def current(pid: int | str = "self") -> ProcessMemory | None:
    """This (or another) process's memory; None where /proc cannot be read (not Linux)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return parse_status(status.read())
    except OSError:
        return None
