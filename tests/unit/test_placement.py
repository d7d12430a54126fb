"""Workers are dealt GPUs round robin; workers sharing a GPU split 90 % of its memory."""

import pytest

from madlib_dl.errors import InvalidArgument
from madlib_dl.training.placement import (
    Gpu, WorkerDevice, memory_fraction, parse_nvidia_smi_memory, place)


def gpus(count, memory_mib=1000):
    return [Gpu(index, memory_mib) for index in range(count)]


# MADlib's fractions, 0.9 / ceil(workers / gpus), as caps on a 1000 MiB GPU; None where a worker has its
# GPU to itself (MADlib's 0.9 there; here TensorFlow keeps its default).
@pytest.mark.parametrize("gpu_count, workers, limits", [
    (4, 4, [None, None, None, None]),           # 0.9, not shared
    (10, 4, [None, None, None, None]),          # 0.9, not shared
    (2, 6, [300, 300, 300, 300, 300, 300]),     # 0.3
    (1, 4, [225, 225, 225, 225]),               # 0.225
    (3, 4, [450, None, None, 450]),             # MADlib: 0.45 for all; here only GPU 0 is shared
])
def test_madlib_fractions_as_memory_limits(gpu_count, workers, limits):
    assert [d.memory_limit_mib for d in place(workers, gpus(gpu_count), True)] == limits


@pytest.mark.parametrize("on_gpu, fraction", [(1, 0.9), (2, 0.45), (3, 0.3), (4, 0.225)])
def test_memory_fraction_is_madlibs(on_gpu, fraction):
    assert memory_fraction(on_gpu) == pytest.approx(fraction)


def test_memory_fraction_needs_a_worker():
    with pytest.raises(ValueError):
        memory_fraction(0)


def test_limit_rounds_down_exactly():
    # 0.9 * 81559 / 2 = 36701.55 -> 36701; 0.9 * 81559 / 3 = 24467.7 -> 24467
    assert {d.memory_limit_mib for d in place(2, [Gpu(0, 81559)], True)} == {36701}
    assert {d.memory_limit_mib for d in place(3, [Gpu(0, 81559)], True)} == {24467}
    assert {d.memory_limit_mib for d in place(3, [Gpu(0, 1001)], True)} == {300}  # 300.3


def test_round_robin_uses_nvidia_smi_indexes():
    devices = place(5, [Gpu(2, 1000), Gpu(5, 1000), Gpu(7, 1000)], True)
    assert [d.cuda_visible_devices for d in devices] == ["2", "5", "7", "2", "5"]
    assert [d.worker for d in devices] == [0, 1, 2, 3, 4]
    assert [d.memory_limit_mib for d in devices] == [450, 450, None, 450, 450]
    assert all(d.uses_gpu for d in devices)


def test_more_gpus_than_workers_uses_the_first_ones():
    assert [d.cuda_visible_devices for d in place(4, gpus(10), True)] == ["0", "1", "2", "3"]


def test_unknown_memory_means_no_cap():
    devices = place(4, [Gpu(0, None), Gpu(1, 2000)], True)
    assert [d.memory_limit_mib for d in devices] == [None, 900, None, 900]


def test_cpu_workers_see_no_gpu_even_when_there_are_gpus():
    devices = place(3, gpus(2), False)
    assert devices == [WorkerDevice(0, "-1", None), WorkerDevice(1, "-1", None), WorkerDevice(2, "-1", None)]
    assert not any(d.uses_gpu for d in devices)
    assert place(2, [], False) == [WorkerDevice(0, "-1", None), WorkerDevice(1, "-1", None)]


def test_environment_pins_pci_order_and_the_device():
    assert place(2, gpus(2), True)[1].environment() == {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "1"}
    assert place(1, [], False)[0].environment()["CUDA_VISIBLE_DEVICES"] == "-1"


def test_use_gpus_without_gpus_names_the_argument():
    with pytest.raises(InvalidArgument) as raised:
        place(4, [], True)
    assert str(raised.value) == ("use_gpus: TRUE but no GPU is visible on the database server "
                                 "(nvidia-smi lists none)")
    assert raised.value.hint == "Use use_gpus => FALSE."


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_workers_must_be_a_positive_integer(workers):
    with pytest.raises(ValueError, match="workers"):
        place(workers, gpus(1), True)


def test_duplicate_gpu_indexes_are_refused():
    with pytest.raises(ValueError, match="distinct"):
        place(2, [Gpu(0, 1000), Gpu(0, 1000)], True)


def test_parse_nvidia_smi_memory():
    assert parse_nvidia_smi_memory("0, 81559\n1, 81559\n") == [Gpu(0, 81559), Gpu(1, 81559)]


def test_parse_nvidia_smi_memory_skips_junk_and_keeps_unknown_memory():
    output = ("\n"
              "WARNING: infoROM is corrupted at gpu 0000:01:00.0\n"
              "  0 ,  40960  \n"
              "   \n"
              "1, [N/A]\n"
              "index, memory.total [MiB]\n"
              "2, [Not Supported]\n"
              "3, 81559, extra\n"
              "No devices were found\n")
    assert parse_nvidia_smi_memory(output) == [Gpu(0, 40960), Gpu(1, None), Gpu(2, None)]


def test_parse_nvidia_smi_memory_of_nothing():
    assert parse_nvidia_smi_memory("") == []
    assert parse_nvidia_smi_memory("No devices were found\n") == []
