"""Which worker sees which GPU.

CUDA memory belongs to a process: each worker session is its own process, and TensorFlow in it takes
(by default) nearly all memory of every GPU it can see. So each worker must be shown one GPU only, and
workers that share a GPU must each be capped to a slice of it. Both happen through the environment and
TensorFlow's start-up options, which count only if set before TensorFlow is first imported in that
process; afterwards they are ignored. With use_gpus FALSE every worker gets CUDA_VISIBLE_DEVICES=-1 so
neither the driver nor any worker touches GPU memory at all.

The GPU numbers are nvidia-smi's, which are in PCI bus order; CUDA numbers GPUs fastest first unless
CUDA_DEVICE_ORDER=PCI_BUS_ID, so :meth:`WorkerDevice.environment` sets that too.

The split follows MADlib (each worker gets 0.9 / workers-per-GPU of the GPU's memory, leaving 10 % for
the CUDA context and fragmentation), but counts the workers actually placed on each GPU: with 3 GPUs and
4 workers, the two workers on GPU 0 get 0.45 each, the lone workers on GPUs 1 and 2 are not capped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from madlib_dl.errors import InvalidArgument

CPU = "-1"
# Fraction of a shared GPU's memory its workers may use together, as a ratio of integers so the
# per-worker cap is computed exactly: floor(memory * 9 / (10 * workers_on_gpu)).
SHARED_NUMERATOR = 9
SHARED_DENOMINATOR = 10


@dataclass(frozen=True)
class Gpu:
    index: int  # as nvidia-smi numbers it
    memory_mib: int | None  # total memory, None when unknown


@dataclass(frozen=True)
class WorkerDevice:
    worker: int  # 0-based worker number
    cuda_visible_devices: str  # value for CUDA_VISIBLE_DEVICES, set before TensorFlow starts: "-1" for CPU
    memory_limit_mib: int | None  # cap on this worker's GPU memory when it shares a GPU; None: no cap, or CPU

    @property
    def uses_gpu(self) -> bool:
        return self.cuda_visible_devices != CPU

    def environment(self) -> dict[str, str]:
        """Variables to set in the worker's process before TensorFlow is first imported."""
        return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": self.cuda_visible_devices}


def memory_fraction(workers_on_gpu: int) -> float:
    """Share of a GPU's memory each of ``workers_on_gpu`` workers gets (MADlib's 0.9 / n)."""
    if workers_on_gpu < 1:
        raise ValueError(f"workers_on_gpu: expected at least 1, got {workers_on_gpu}")
    return SHARED_NUMERATOR / (SHARED_DENOMINATOR * workers_on_gpu)


def place(workers: int, gpus: Sequence[Gpu], use_gpus: bool) -> list[WorkerDevice]:
    """One device per worker: GPUs dealt round robin, shared GPUs split evenly among their workers."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: expected an integer of at least 1, got {workers!r}")
    if not use_gpus:
        return [WorkerDevice(worker, CPU, None) for worker in range(workers)]
    if not gpus:
        raise InvalidArgument("use_gpus: TRUE but no GPU is visible on the database server "
                              "(nvidia-smi lists none)", hint="Use use_gpus => FALSE.")
    indexes = [gpu.index for gpu in gpus]
    if len(set(indexes)) != len(indexes):
        raise ValueError(f"gpus: expected distinct GPU indexes, got {indexes}")
    assigned = [gpus[worker % len(gpus)] for worker in range(workers)]
    sharing = Counter(gpu.index for gpu in assigned)
    devices = []
    for worker, gpu in enumerate(assigned):
        on_gpu = sharing[gpu.index]
        limit = None
        if on_gpu > 1 and gpu.memory_mib is not None and gpu.memory_mib > 0:
            limit = gpu.memory_mib * SHARED_NUMERATOR // (SHARED_DENOMINATOR * on_gpu)
        devices.append(WorkerDevice(worker, str(gpu.index), limit))
    return devices


def parse_nvidia_smi_memory(output: str) -> list[Gpu]:
    """GPUs from ``nvidia-smi --query-gpu=index,memory.total --format=csv,noheader,nounits``.

    Lines that are not "<index>, <memory>" (blank lines, warnings) are skipped; a memory that is not a
    whole number of MiB ("[N/A]", "[Not Supported]") is unknown (None).
    """
    found = []
    for line in output.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 2 or not fields[0].isdigit():
            continue
        memory = fields[1]
        found.append(Gpu(int(fields[0]), int(memory) if memory.isdigit() else None))
    return found
