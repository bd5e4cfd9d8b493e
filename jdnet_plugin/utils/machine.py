"""What a timing depends on: the CPU model and vector unit (the development VMs differ), and the GPU."""
from __future__ import annotations

import contextlib
import os
import platform

import torch

__all__ = ["cpu_model", "describe_machine"]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    return model


def describe_machine(device: torch.device | str = "cpu") -> str:
    """One phrase: ``"<CPU> (<vector unit>, N CPUs)"``, the GPU first when ``device`` is one."""
    device = torch.device(device)
    cpu = f"{cpu_model()} ({torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} CPUs)"
    return f"{torch.cuda.get_device_name(device)}; {cpu}" if device.type == "cuda" else cpu
