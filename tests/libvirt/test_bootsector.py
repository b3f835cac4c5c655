"""The generated boot sector: size, signature, encoded addresses, both guest kinds."""

from __future__ import annotations

import struct

import pytest

from balancer.lab.bootsector import (
    COUNTER_GPA,
    DELAY_LOOP,
    FILL_START_GPA,
    SECTOR_SIZE,
    GuestKind,
    boot_sector,
    parse_xp_word,
)


@pytest.mark.parametrize("kind", list(GuestKind))
def test_sector_is_512_bytes_and_bootable(kind: GuestKind) -> None:
    sector = boot_sector(kind)
    assert len(sector) == SECTOR_SIZE
    assert sector[-2:] == b"\x55\xaa"
    assert sector[0] == 0xEA  # far jump normalising CS to 0000:7C05
    assert struct.unpack_from("<HH", sector, 1) == (0x7C05, 0)


def test_busy_guest_increments_the_counter_and_idle_guest_halts() -> None:
    busy = boot_sector(GuestKind.BUSY)
    idle = boot_sector(GuestKind.IDLE)
    inc = b"\xff\x05" + struct.pack("<I", COUNTER_GPA)
    assert inc in busy and inc not in idle
    assert b"\xb9" + struct.pack("<I", DELAY_LOOP) + b"\xe2\xfe" in busy
    assert b"\xf4\xeb\xfd" in idle  # hlt; jmp back to hlt
    assert b"\xf4" not in busy[: busy.index(inc)]


def test_fill_size_and_start_are_encoded() -> None:
    sector = boot_sector(GuestKind.IDLE, fill_mib=4)
    assert b"\xbf" + struct.pack("<I", FILL_START_GPA) in sector
    assert b"\xb9" + struct.pack("<I", 4 * 1024 * 1024 // 4) in sector
    assert boot_sector(GuestKind.IDLE, fill_mib=4) != boot_sector(GuestKind.IDLE, fill_mib=8)


def test_gdt_descriptor_points_into_the_sector() -> None:
    sector = boot_sector(GuestKind.BUSY)
    lgdt = sector.index(b"\x0f\x01\x16")
    desc_addr = struct.unpack_from("<H", sector, lgdt + 3)[0] - 0x7C00
    limit, base = struct.unpack_from("<HI", sector, desc_addr)
    assert limit == 23
    gdt = base - 0x7C00
    assert struct.unpack_from("<QQQ", sector, gdt) == (
        0,
        0x00CF_9A00_0000_FFFF,
        0x00CF_9200_0000_FFFF,
    )


def test_bad_fill_is_refused() -> None:
    with pytest.raises(ValueError, match="fill_mib"):
        boot_sector(GuestKind.BUSY, fill_mib=-1)


def test_parse_xp_output() -> None:
    assert parse_xp_word("0000000000007e00: 0x0000002a\r\n") == 42
    assert parse_xp_word("0000000000007e00: 0xffffffff") == 0xFFFFFFFF
    with pytest.raises(ValueError):
        parse_xp_word("unknown command")


def test_dirty_guest_rewrites_its_memory_in_a_loop() -> None:
    dirty = boot_sector(GuestKind.DIRTY, fill_mib=8)
    inc = b"\xff\x05" + struct.pack("<I", COUNTER_GPA)
    assert inc in dirty
    # the loop body: reload edi/ecx, change the pattern, rep stosd, count, jump back
    body = (
        b"\xbf"
        + struct.pack("<I", FILL_START_GPA)
        + b"\xb9"
        + struct.pack("<I", 8 * 1024 * 1024 // 4)
        + b"\x40\xf3\xab"
        + inc
    )
    at = dirty.index(body, dirty.index(b"\xc7\x05"))
    jump = at + len(body)
    assert (
        dirty[jump] == 0xEB and jump + 2 + struct.unpack("<b", dirty[jump + 1 : jump + 2])[0] == at
    )
