"""The device's peak arithmetic rate, the ceiling of the roofline line in `bench vision`.

CPU: threads x clock x FLOPs per cycle per core, from the vendors' descriptions of the
vector units: AMD Zen 2, 3 and 4 have two 256-bit FMA pipes (Zen 4 runs AVX-512 on them
in two halves), i.e. 16 fp32 FMAs = 32 FLOPs per cycle (AMD's Software Optimization Guides
for families 17h and 19h); Zen 5 (family 1Ah) has 512-bit pipes, 64; Intel cores with two
AVX-512 FMA units 64, AVX2 cores 32 (Intel 64 and IA-32 Architectures Optimization
Reference Manual); Arm Cortex-A78AE (Jetson Orin) two 128-bit NEON FMA pipes, 16. The
clock is the core's maximum where the kernel states it, else the current one, so the
figure is an upper bound. GPU: the datasheets' dense figures for the dtype (fp32 without
TF32, bf16/fp16 on tensor cores). Unknown devices give None; `--peak-gflops` sets it.
"""

from __future__ import annotations

import platform
from pathlib import Path

# GPU name fragment -> (fp32 TFLOP/s, bf16/fp16 dense tensor TFLOP/s, memory GB/s, datasheet)
GPUS = {
    "H200": (67.0, 989.5, 4800.0, "NVIDIA H200 Tensor Core GPU datasheet (SXM)"),
    "H100 PCIe": (51.2, 756.0, 2000.0, "NVIDIA H100 Tensor Core GPU datasheet (PCIe)"),
    "H100": (67.0, 989.5, 3350.0, "NVIDIA H100 Tensor Core GPU datasheet (SXM)"),
    "A100-SXM4-80GB": (19.5, 312.0, 2039.0, "NVIDIA A100 Tensor Core GPU datasheet (80GB SXM)"),
    "A100": (19.5, 312.0, 1555.0, "NVIDIA A100 Tensor Core GPU datasheet (40GB)"),
    "L4": (30.3, 121.0, 300.0, "NVIDIA L4 Tensor Core GPU datasheet"),
    "RTX 4090": (82.6, 165.2, 1008.0, "NVIDIA Ada GPU architecture whitepaper (RTX 4090)"),
}


def peak(device: str, dtype: str, threads: int) -> dict:
    """{"gflops": float | None, "source": str} for `device` ('cpu', 'cuda', 'cuda:N')."""
    if device.startswith("cuda"):
        import torch

        name = torch.cuda.get_device_name(device)
        for fragment, (fp32, half, _, source) in GPUS.items():
            if fragment in name:
                return {"gflops": (fp32 if dtype == "float32" else half) * 1e3, "source": f"{source}; {name}"}
        return {"gflops": None, "source": f"{name}: not in the table"}
    per_cycle, core = _cpu_flops_per_cycle()
    ghz = _cpu_ghz()
    if per_cycle is None or ghz is None:
        return {"gflops": None, "source": f"{core}: unknown vector units or clock"}
    if dtype != "float32":
        # bf16 runs at the fp32 rate or below on CPUs without AMX / bf16 dot products.
        core += f"; {dtype} counted at the fp32 rate"
    return {"gflops": round(threads * ghz * per_cycle, 1),
            "source": f"{threads} threads x {ghz:.2f} GHz x {per_cycle} fp32 FLOP/cycle ({core})"}


def bandwidth(device: str, megabytes: int = 256, repeats: int = 5) -> dict:
    """{"copy_gbps": measured, "datasheet_gbps": float | None, "bandwidth_source": str}: the
    memory rate of `device`, measured as a large tensor copied (bytes read + written over the
    median time), and the datasheet's where the GPU is in the table."""
    import time

    import torch

    source = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    times = []
    for _ in range(repeats + 1):  # the first copy warms up
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        target.copy_(source)
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    copy = 2 * source.numel() / sorted(times[1:])[repeats // 2] / 1e9
    sheet, label = None, "measured copy only"
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
        label = f"{name}: not in the table"
        for fragment, (*_, gbps, sheet_source) in GPUS.items():
            if fragment in name:
                sheet, label = gbps, f"{sheet_source}; {name}"
                break
    return {"copy_gbps": round(copy, 1), "datasheet_gbps": sheet, "bandwidth_source": label}


def _cpu_info() -> dict[str, str]:
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def _cpu_flops_per_cycle() -> tuple[int | None, str]:
    info = _cpu_info()
    flags = set(info.get("flags", "").split())
    vendor, family = info.get("vendor_id", ""), int(info.get("cpu family", "0") or 0)
    name = info.get("model name", platform.processor() or platform.machine())
    if platform.machine() in ("aarch64", "arm64"):
        return 16, f"{name or 'Arm'}, 2x128-bit NEON FMA"
    if vendor == "AuthenticAMD" and family in (0x17, 0x19):
        return 32, f"{name}, AMD family {family:x}h, 2x256-bit FMA"
    if vendor == "AuthenticAMD" and family >= 0x1A:
        return 64, f"{name}, AMD family {family:x}h, 2x512-bit FMA"
    if "avx512f" in flags:
        return 64, f"{name}, 2x512-bit FMA"
    if "fma" in flags and "avx2" in flags:
        return 32, f"{name}, 2x256-bit FMA"
    return None, name


def _cpu_ghz() -> float | None:
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e6
    except (OSError, ValueError):
        pass
    mhz = _cpu_info().get("cpu MHz")
    return float(mhz) / 1e3 if mhz else None
