"""The machine a benchmark ran on: CPU model and its bfloat16 features, and the allocator setting of the run,
printed and saved with every result."""

from __future__ import annotations

import platform
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx2")


def cpu_info() -> dict:
    """{"model": ..., "bf16_features": [...], "cores": n} from /proc/cpuinfo (Linux), else what platform says."""
    model, flags, cores, family = platform.processor() or platform.machine(), set(), 0, {}
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name":
            model = value.strip()
            cores += 1
        elif key == "flags" and not flags:
            flags = set(value.split())
        elif key in ("cpu family", "model") and key not in family:
            family[key] = value.strip()
    if family:  # e.g. AMD family 26 = Zen 5, where the model name says only "AMD EPYC"
        model += f" (family {family.get('cpu family', '?')}, model {family.get('model', '?')})"
    return {"model": model, "bf16_features": [f for f in BF16_FLAGS if f in flags], "cores": cores}


def describe(info: dict) -> str:
    features = ", ".join(info["bf16_features"]) or "none"
    return f"CPU: {info['model']} ({info['cores']} logical cores); bf16/vector features: {features}"


def add_malloc_option(parser) -> None:
    """`--keep-freed-memory`, for every benchmark that compares tools in one process."""
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="call convscope.accel.keep_freed_memory() first, as the convscope command does (every "
                             "tool in this process then reuses freed memory instead of faulting it in again)")


def malloc_setting(keep: bool) -> str:
    """Apply --keep-freed-memory; say which allocator settings the run had (saved with the results)."""
    if not keep:
        return "C library defaults"
    from convscope.accel import keep_freed_memory

    return "kept freed memory (accel.keep_freed_memory)" if keep_freed_memory() else "C library defaults (not glibc)"
