"""Which GPUs this host has, as seen by TensorFlow or by nvidia-smi."""

from __future__ import annotations

import shutil
import subprocess


def tensorflow_gpus() -> list[str]:
    """One description per GPU TensorFlow can use. Listing physical devices allocates no GPU memory."""
    from madlib_dl.keras_runtime import tf_setup

    tf = tf_setup.tensorflow()
    descriptions = []
    for index, device in enumerate(tf.config.list_physical_devices("GPU")):
        details = tf.config.experimental.get_device_details(device)
        parts = [f"device: {index}", f"name: {details.get('device_name', device.name)}"]
        if "compute_capability" in details:
            parts.append("compute capability: {}.{}".format(*details["compute_capability"]))
        descriptions.append(", ".join(parts))
    return descriptions


def nvidia_gpus(run=subprocess.run) -> list[str]:
    """The lines of ``nvidia-smi -L``; no GPUs when the tool is missing or fails (as MADlib does)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        result = run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if result.returncode != 0:
        return []
    return parse_nvidia_smi(result.stdout)


def parse_nvidia_smi(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if line.strip().startswith("GPU ")]


def nvidia_gpu_memory(run=subprocess.run) -> str:
    """``index, memory.total`` lines (MiB) from nvidia-smi; empty when the tool is missing or fails."""
    if shutil.which("nvidia-smi") is None:
        return ""
    try:
        result = run(["nvidia-smi", "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
                     capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout if result.returncode == 0 else ""
