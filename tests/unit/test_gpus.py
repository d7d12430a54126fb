"""GPU discovery through nvidia-smi, with the tool faked."""

import subprocess

from madlib_dl.keras_runtime import gpus

SMI = """GPU 0: NVIDIA H200 (UUID: GPU-0b1c)
GPU 1: NVIDIA H200 (UUID: GPU-7f2a)
"""


def test_parse_nvidia_smi_keeps_one_line_per_gpu():
    assert gpus.parse_nvidia_smi(SMI + "\n  MIG 1g.18gb Device 0: (UUID: MIG-1)\n") == [
        "GPU 0: NVIDIA H200 (UUID: GPU-0b1c)", "GPU 1: NVIDIA H200 (UUID: GPU-7f2a)"]
    assert gpus.parse_nvidia_smi("") == []


def test_nvidia_gpus_is_empty_when_the_tool_fails(monkeypatch):
    monkeypatch.setattr(gpus.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    failed = lambda *a, **k: subprocess.CompletedProcess(a, 9, "", "NVIDIA-SMI has failed")
    assert gpus.nvidia_gpus(run=failed) == []
    ok = lambda *a, **k: subprocess.CompletedProcess(a, 0, SMI, "")
    assert len(gpus.nvidia_gpus(run=ok)) == 2


def test_nvidia_gpus_is_empty_without_the_tool(monkeypatch):
    monkeypatch.setattr(gpus.shutil, "which", lambda name: None)
    assert gpus.nvidia_gpus(run=lambda *a, **k: 1 / 0) == []
