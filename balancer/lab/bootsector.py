"""The lab guests' whole operating system: one generated 512-byte boot sector.

SeaBIOS loads the sector at 0000:7C00 and jumps to it. The code (hand-assembled below, one
instruction per line with its mnemonic) does:

1. normalise CS, set up a stack, enable A20 and switch to 32-bit flat protected mode;
2. fill ``fill_mib`` MiB of RAM from 1 MiB upwards with a non-zero pattern, so a migration has
   real pages to copy (zero pages are nearly free to migrate);
3. ``dirty``: rewrite the fill region over and over, counting the passes in the counter;
   ``busy``: spin forever, incrementing the 32-bit counter at guest-physical
   :data:`COUNTER_GPA` once every ``2**16`` iterations of a delay loop (about ten thousand
   increments per second under KVM: it takes days to wrap). The vCPU runs at 100 %.
   ``idle``: halt with interrupts off, using no CPU at all.

The counter is read from outside with the QEMU monitor command ``xp /1wx 0x7e00``.
"""

from __future__ import annotations

import struct
from enum import StrEnum

SECTOR_SIZE = 512
#: guest-physical address of the busy guest's 32-bit counter (just after the boot sector)
COUNTER_GPA = 0x7E00
#: where the memory fill starts (1 MiB, above the BIOS areas)
FILL_START_GPA = 0x0010_0000
#: delay-loop iterations per counter increment
DELAY_LOOP = 0x0001_0000
FILL_PATTERN = 0xA5A5_5A5A
_LOAD_ADDR = 0x7C00


class GuestKind(StrEnum):
    BUSY = "busy"
    IDLE = "idle"
    #: rewrites its whole fill region in a loop (hundreds of MiB/s of dirty pages) and counts
    #: the passes: a pre-copy migration of it does not converge without help
    DIRTY = "dirty"


def boot_sector(kind: GuestKind, *, fill_mib: int = 8) -> bytes:
    """The 512-byte boot sector of a ``busy`` or ``idle`` guest (ends with 55 AA)."""
    if fill_mib < 0 or fill_mib > 3072:
        raise ValueError(f"fill_mib must be between 0 and 3072, not {fill_mib}")
    code = bytearray()
    # -- 16-bit real mode ----------------------------------------------------------------------
    code += b"\xea" + struct.pack("<HH", _LOAD_ADDR + 5, 0)  # jmp 0000:7C05 (normalise CS)
    code += b"\xfa"  # cli
    code += b"\x31\xc0"  # xor ax, ax
    code += b"\x8e\xd8"  # mov ds, ax
    code += b"\x8e\xd0"  # mov ss, ax
    code += b"\xbc" + struct.pack("<H", _LOAD_ADDR)  # mov sp, 0x7c00
    code += b"\xe4\x92"  # in al, 0x92
    code += b"\x0c\x02"  # or al, 2          (fast A20)
    code += b"\xe6\x92"  # out 0x92, al
    lgdt_at = len(code)
    code += b"\x0f\x01\x16\x00\x00"  # lgdt [gdt_desc]   (address patched below)
    code += b"\x0f\x20\xc0"  # mov eax, cr0
    code += b"\x66\x83\xc8\x01"  # or eax, 1
    code += b"\x0f\x22\xc0"  # mov cr0, eax
    ljmp_at = len(code)
    code += b"\xea\x00\x00\x08\x00"  # jmp 0x08:pm32      (offset patched below)
    # -- 32-bit protected mode -----------------------------------------------------------------
    pm32 = len(code)
    code += b"\xb8\x10\x00\x00\x00"  # mov eax, 0x10
    code += b"\x8e\xd8"  # mov ds, ax
    code += b"\x8e\xc0"  # mov es, ax
    code += b"\x8e\xd0"  # mov ss, ax
    code += b"\xbc" + struct.pack("<I", _LOAD_ADDR)  # mov esp, 0x7c00
    code += b"\xbf" + struct.pack("<I", FILL_START_GPA)  # mov edi, FILL_START
    code += b"\xb9" + struct.pack("<I", fill_mib * 1024 * 1024 // 4)  # mov ecx, dwords
    code += b"\xb8" + struct.pack("<I", FILL_PATTERN)  # mov eax, pattern
    code += b"\xfc"  # cld
    code += b"\xf3\xab"  # rep stosd
    if kind is GuestKind.BUSY:
        code += b"\xc7\x05" + struct.pack("<II", COUNTER_GPA, 0)  # mov dword [COUNTER], 0
        loop = len(code)
        code += b"\xb9" + struct.pack("<I", DELAY_LOOP)  # mov ecx, DELAY_LOOP
        code += b"\xe2\xfe"  # loop $
        code += b"\xff\x05" + struct.pack("<I", COUNTER_GPA)  # inc dword [COUNTER]
        code += b"\xeb" + struct.pack("<b", loop - (len(code) + 2))  # jmp loop
    elif kind is GuestKind.DIRTY:
        code += b"\xc7\x05" + struct.pack("<II", COUNTER_GPA, 0)  # mov dword [COUNTER], 0
        loop = len(code)
        code += b"\xbf" + struct.pack("<I", FILL_START_GPA)  # mov edi, FILL_START
        code += b"\xb9" + struct.pack("<I", fill_mib * 1024 * 1024 // 4)  # mov ecx, dwords
        code += b"\x40"  # inc eax            (a new pattern each pass)
        code += b"\xf3\xab"  # rep stosd
        code += b"\xff\x05" + struct.pack("<I", COUNTER_GPA)  # inc dword [COUNTER]
        code += b"\xeb" + struct.pack("<b", loop - (len(code) + 2))  # jmp loop
    else:
        halt = len(code)
        code += b"\xf4"  # hlt
        code += b"\xeb" + struct.pack("<b", halt - (len(code) + 2))  # jmp halt
    # -- GDT: null, flat 32-bit code (0x08), flat data (0x10) ----------------------------------
    while len(code) % 8:
        code += b"\x00"
    gdt = len(code)
    code += struct.pack("<Q", 0)
    code += struct.pack("<Q", 0x00CF_9A00_0000_FFFF)
    code += struct.pack("<Q", 0x00CF_9200_0000_FFFF)
    gdt_desc = len(code)
    code += struct.pack("<HI", 3 * 8 - 1, _LOAD_ADDR + gdt)
    # -- patch forward references ----------------------------------------------------------------
    code[lgdt_at + 3 : lgdt_at + 5] = struct.pack("<H", _LOAD_ADDR + gdt_desc)
    code[ljmp_at + 1 : ljmp_at + 3] = struct.pack("<H", _LOAD_ADDR + pm32)
    if len(code) > SECTOR_SIZE - 2:
        raise AssertionError("boot code does not fit in one sector")
    code += b"\x00" * (SECTOR_SIZE - 2 - len(code))
    code += b"\x55\xaa"
    return bytes(code)


def parse_xp_word(output: str) -> int:
    """The value printed by the monitor command ``xp /1wx ADDR``.

    >>> parse_xp_word("0000000000007e00: 0x0000002a\\r\\n")
    42
    """
    _, sep, rest = output.partition(":")
    if not sep or not rest.split():
        raise ValueError(f"unexpected xp output: {output!r}")
    return int(rest.split()[0], 16)
