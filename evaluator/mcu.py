"""A Cortex-M target measured here: the C export cross-compiled with Debian's ``gcc-arm-none-eabi`` and run once
in an emulator of the core (``unicorn``, QEMU's Cortex-M models).

:func:`measure` builds the C library with a small bench harness (``vae_bench_main``: one ``vae_reconstruct`` of
``vae_bench_in``) for ``-mcpu=<cpu>`` (``--specs=nano.specs``, ``-O2``, ``-ffunction-sections -fdata-sections
-Wl,--gc-sections``, ``-fstack-usage``), links it bare-metal (flash at 0x0, RAM at 0x20000000, no startup code:
the emulator loads every segment at its run address) and reports:

* ``flash_bytes`` = text + data and ``ram_bytes`` = data + bss + the stack, from ``arm-none-eabi-size`` (exact
  for this build) and the emulator;
* ``stack_bytes``: the deepest stack the run reached (the stack pointer's lowest value at a basic block's start)
  and ``stack_bytes_su``: the sum of the ``.su`` frame sizes of the model's functions (a bound that ignores which
  calls nest);
* ``instructions``: the instructions one reconstruction executes - an **instruction count, not a cycle count**
  (every instruction of each executed basic block, Thumb-2 lengths decoded from the code: a 16-bit or 32-bit
  encoding), with ``cycles_estimate`` = instructions x :data:`CPI_ASSUMED` (an estimate under a stated CPI:
  1 cycle per instruction is a zero-wait-state flash, single-issue M4's best case; loads, multiplies and
  branches cost more, so real cycles are higher).

Cores: ``cortex-m4`` (hard float, FPv4-SP), ``cortex-m7`` (hard float, FPv5), ``cortex-m0plus`` (soft float,
ARMv6-M; emulated by unicorn's Cortex-M0 model, the same instruction set).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search_space import ArchSpec, VaenasInputError

CPI_ASSUMED = 1.0
FLASH_BASE, RAM_BASE = 0x0000_0000, 0x2000_0000
RAM_SIZE = 64 * 1024 * 1024
HALT = 0x0FFF_FFF0  # return address of the bench call: the emulation stops there
CC = "arm-none-eabi-gcc"
SIZE = "arm-none-eabi-size"


@dataclass(frozen=True)
class Core:
    name: str
    flags: tuple[str, ...]
    unicorn_model: str  # unicorn.arm_const name
    fpu: bool


CORES = {
    "cortex-m4": Core("cortex-m4", ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
                      "UC_CPU_ARM_CORTEX_M4", True),
    "cortex-m7": Core("cortex-m7", ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-sp-d16"),
                      "UC_CPU_ARM_CORTEX_M7", True),
    "cortex-m0plus": Core("cortex-m0plus", ("-mcpu=cortex-m0plus", "-mthumb", "-mfloat-abi=soft"),
                          "UC_CPU_ARM_CORTEX_M0", False),
}

BENCH_C = """/* vaenas Cortex-M bench harness: one reconstruction of vae_bench_in. */
#include "vae_model.h"

float vae_bench_in[VAE_N_INPUT];
float vae_bench_out[VAE_N_OUTPUT];

void vae_bench_main(void)
{
    vae_reconstruct(vae_bench_in, vae_bench_out);
}
"""

LINK_LD = f"""MEMORY
{{
    FLASH (rx) : ORIGIN = {FLASH_BASE:#x}, LENGTH = 128M
    RAM (rwx) : ORIGIN = {RAM_BASE:#x}, LENGTH = {RAM_SIZE}
}}
ENTRY(vae_bench_main)
SECTIONS
{{
    .text : {{ *(.text*) *(.rodata*) }} > FLASH
    .ARM.exidx : {{ *(.ARM.exidx*) }} > FLASH
    .data : {{ *(.data*) }} > RAM AT > FLASH
    .bss (NOLOAD) : {{ *(.bss*) *(COMMON) }} > RAM
}}
"""


def check_cpu(cpu: object, key: str = "latency.cpu") -> str:
    if cpu not in CORES:
        raise VaenasInputError(f"{key}: {cpu!r} is not a core vaenas measures; use one of {', '.join(CORES)}")
    return str(cpu)


def missing_tools() -> str | None:
    """What to install for the Cortex-M target (one phrase), or None."""
    if shutil.which(CC) is None or shutil.which(SIZE) is None:
        return ("the Arm cross-compiler is not installed (Debian: apt-get install gcc-arm-none-eabi "
                "libnewlib-arm-none-eabi)")
    try:
        import unicorn  # noqa: F401
    except ImportError:
        return "the Cortex-M emulator is not installed (pip install unicorn)"
    return None


def build(folder: Path, cpu: str) -> Path:
    """Cross-compile the C export in ``folder`` (``vae_model.c``/``.h``) with the bench harness; the ELF's path."""
    core = CORES[check_cpu(cpu)]
    (folder / "mcu_bench.c").write_text(BENCH_C)
    (folder / "mcu_link.ld").write_text(LINK_LD)
    elf = folder / f"vae_{core.name}.elf"
    cmd = [CC, *core.flags, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-ffunction-sections", "-fdata-sections", "-fstack-usage",
           "--specs=nano.specs", "-nostartfiles", "-Wl,--gc-sections", "-T", "mcu_link.ld",
           "mcu_bench.c", "vae_model.c", "-lm", "-o", elf.name]
    r = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{CC} failed for {cpu}: {r.stderr.strip()[-2000:]}")
    return elf


def section_sizes(elf: Path) -> dict[str, int]:
    out = subprocess.run([SIZE, str(elf)], capture_output=True, text=True, check=True).stdout.splitlines()[1].split()
    text, data, bss = (int(v) for v in out[:3])
    return {"text": text, "data": data, "bss": bss}


def _symbols(elf: Path) -> dict[str, int]:
    out = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True, check=True).stdout
    return {p[2]: int(p[0], 16) for p in (line.split() for line in out.splitlines()) if len(p) == 3}


def _segments(elf: Path) -> list[tuple[int, bytes, int]]:
    """(address, file bytes, memory size) of each PT_LOAD segment, at its run address."""
    data = elf.read_bytes()
    phoff, = struct.unpack_from("<I", data, 28)
    phentsize, phnum = struct.unpack_from("<HH", data, 42)
    out = []
    for i in range(phnum):
        p_type, p_offset, p_vaddr, _, p_filesz, p_memsz, _, _ = struct.unpack_from("<8I", data, phoff + i * phentsize)
        if p_type == 1:
            out.append((p_vaddr, data[p_offset:p_offset + p_filesz], p_memsz))
    return out


def _thumb_count(code: bytes) -> int:
    """Instructions in a run of Thumb-2 code: a halfword whose top five bits are 11101, 11110 or 11111 starts a
    32-bit instruction."""
    n = i = 0
    while i + 1 < len(code):
        hw = code[i] | (code[i + 1] << 8)
        i += 4 if (hw >> 11) in (0b11101, 0b11110, 0b11111) else 2
        n += 1
    return n


def emulate(elf: Path, cpu: str, x: np.ndarray) -> dict[str, int]:
    """Run ``vae_bench_main`` once on input ``x``: instructions executed and the deepest stack."""
    import unicorn
    from unicorn import arm_const as A

    core = CORES[check_cpu(cpu)]
    uc = unicorn.Uc(unicorn.UC_ARCH_ARM, unicorn.UC_MODE_THUMB | unicorn.UC_MODE_MCLASS)
    uc.ctl_set_cpu_model(getattr(A, core.unicorn_model))
    segs = _segments(elf)
    flash_end = max([a + m for a, _, m in segs if a < RAM_BASE] + [HALT + 16])
    uc.mem_map(FLASH_BASE, (flash_end + 0xFFFF) & ~0xFFFF)
    uc.mem_map(RAM_BASE, RAM_SIZE)
    for addr, blob, _ in segs:
        uc.mem_write(addr, blob)
    uc.mem_write(HALT, b"\xfe\xe7")  # b .
    sym = _symbols(elf)
    uc.mem_write(sym["vae_bench_in"], np.asarray(x, dtype="<f4").tobytes())
    if core.fpu:  # the FPU on (FPEXC.EN), as a startup file's CPACR write would leave it
        uc.reg_write(A.UC_ARM_REG_FPEXC, 0x4000_0000)
    sp0 = RAM_BASE + RAM_SIZE
    uc.reg_write(A.UC_ARM_REG_SP, sp0)
    uc.reg_write(A.UC_ARM_REG_LR, HALT | 1)
    counts: dict[int, int] = {}
    state = {"n": 0, "sp": sp0}

    def block(u, address, size, _):
        k = counts.get((address, size))
        if k is None:
            k = counts[(address, size)] = _thumb_count(bytes(u.mem_read(address, size)))
        state["n"] += k
        sp = u.reg_read(A.UC_ARM_REG_SP)
        if sp < state["sp"]:
            state["sp"] = sp

    uc.hook_add(unicorn.UC_HOOK_BLOCK, block)
    uc.emu_start(sym["vae_bench_main"] | 1, HALT)
    out = np.frombuffer(bytes(uc.mem_read(sym["vae_bench_out"], 4 * _n_out(sym, elf))), dtype="<f4")
    return {"instructions": state["n"], "stack_bytes": sp0 - state["sp"], "out": out}


def _n_out(sym: dict, elf: Path) -> int:
    out = subprocess.run(["arm-none-eabi-nm", "-S", str(elf)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        p = line.split()
        if len(p) == 4 and p[3] == "vae_bench_out":
            return int(p[1], 16) // 4
    raise RuntimeError("vae_bench_out not found")


def stack_su(folder: Path) -> int:
    """Sum of the ``.su`` frame sizes of the model's functions."""
    total = 0
    for su in folder.glob("*.su"):
        for line in su.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1].strip().isdigit():
                total += int(parts[1])
    return total


def measure(spec: ArchSpec, packed: bytes, folder: Path, cpu: str, x: np.ndarray | None = None) -> dict:
    """Export the C library of ``spec`` into ``folder``, cross-compile it for ``cpu`` and emulate one reconstruction."""
    from .deploy.c_lib import write_c

    folder.mkdir(parents=True, exist_ok=True)
    write_c(spec, packed, folder)
    elf = build(folder, cpu)
    sizes = section_sizes(elf)
    x = np.full(spec.n_inputs, 0.5, np.float32) if x is None else np.asarray(x, np.float32).reshape(-1)
    run = emulate(elf, cpu, x)
    n = run["instructions"]
    return {"cpu": cpu, "flash_bytes": sizes["text"] + sizes["data"],
            "ram_bytes": sizes["data"] + sizes["bss"] + run["stack_bytes"], **sizes,
            "stack_bytes": run["stack_bytes"], "stack_bytes_su": stack_su(folder), "instructions": n,
            "cycles_estimate": int(n * CPI_ASSUMED), "cpi_assumed": CPI_ASSUMED, "out": run["out"]}
