"""Test helpers: a held-open TCP echo stream and a capture of announce frames on the bridge."""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Self

ETH_P_ALL = 0x0003
ETH_P_ARP = 0x0806
ETH_P_RARP = 0x8035


@dataclass(slots=True)
class EchoStream:
    """Sends numbered lines over one TCP connection and checks every byte that comes back:
    same bytes, same order, no reset; records the longest silence between replies."""

    address: str
    port: int
    interval_s: float = 0.005
    sent: bytearray = field(default_factory=bytearray)
    received: bytearray = field(default_factory=bytearray)
    arrivals: list[float] = field(default_factory=list)
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _sock: socket.socket | None = None

    def start(self) -> EchoStream:
        self._sock = socket.create_connection((self.address, self.port), timeout=10)
        self._sock.settimeout(None)
        for fn in (self._send, self._recv):
            t = threading.Thread(target=fn, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _send(self) -> None:
        assert self._sock is not None
        n = 0
        try:
            while not self._stop.is_set():
                line = f"{n:08d}\n".encode()
                self._sock.sendall(line)
                self.sent += line
                n += 1
                time.sleep(self.interval_s)  # the pace of the stream, not a wait for anything
        except OSError as exc:
            self.error = exc

    def _recv(self) -> None:
        assert self._sock is not None
        try:
            while True:
                chunk = self._sock.recv(65536)
                if not chunk:
                    if not self._stop.is_set():
                        self.error = ConnectionError("the guest closed the connection")
                    return
                self.received += chunk
                self.arrivals.append(time.monotonic())
                if self._stop.is_set() and len(self.received) >= len(self.sent):
                    return
        except OSError as exc:
            if not self._stop.is_set():
                self.error = exc

    def replies_after(self, t: float) -> int:
        return sum(1 for a in self.arrivals if a > t)

    def wait_replies_after(self, t: float, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.replies_after(t) < count:
            if self.error is not None:
                raise AssertionError(f"the echo connection broke: {self.error!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {count} echo replies within {timeout_s}s")
            time.sleep(0.02)

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop sending, wait until everything sent came back, close."""
        self._stop.set()
        self._threads[0].join(timeout_s)
        deadline = time.monotonic() + timeout_s
        while len(self.received) < len(self.sent) and self.error is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert self._sock is not None
        self._sock.close()

    def longest_gap_s(self) -> float:
        return max(
            (b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)), default=0.0
        )


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


class _Sniffer:
    """Every frame seen on ``iface`` (a raw AF_PACKET socket) handed to :meth:`on_frame` in a
    thread, from :meth:`start` until :meth:`stop`."""

    def __init__(self, iface: str) -> None:
        self.iface = iface
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    def on_frame(self, frame: bytes) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self._sock.bind((self.iface, 0))
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                frame = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.on_frame(frame)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()


class AnnounceCapture(_Sniffer):
    """Frames on ``bridge`` whose Ethernet source is ``mac`` and that announce it: RARP (QEMU's
    self-announce) or gratuitous ARP. Each entry: (monotonic time, ethertype)."""

    def __init__(self, bridge: str, mac: str) -> None:
        super().__init__(bridge)
        self.want = mac_bytes(mac)
        self.frames: list[tuple[float, int]] = []

    def on_frame(self, frame: bytes) -> None:
        if len(frame) < 14 or frame[6:12] != self.want:
            return
        (ethertype,) = struct.unpack("!H", frame[12:14])
        if ethertype in (ETH_P_RARP, ETH_P_ARP):
            self.frames.append((time.monotonic(), ethertype))

    def after(self, t: float, ethertype: int = ETH_P_RARP) -> list[float]:
        return [ts for ts, et in self.frames if ts >= t and et == ethertype]


class StreamSniffer(_Sniffer):
    """The first payload bytes of every TCP connection to ``ports`` on loopback: enough to
    tell a TLS stream (a handshake record, ``16 03``) from QEMU's clear migration stream
    (which starts with its magic ``QEVM``)."""

    def __init__(self, ports: range, iface: str = "lo") -> None:
        super().__init__(iface)
        self.ports = ports
        self.first_payloads: dict[tuple[int, int], bytes] = {}

    def on_frame(self, frame: bytes) -> None:
        if len(frame) < 14 + 20 or frame[12:14] != b"\x08\x00" or frame[14 + 9] != 6:
            return
        ip = frame[14:]
        tcp = ip[(ip[0] & 0x0F) * 4 :]
        if len(tcp) < 20:
            return
        sport, dport = struct.unpack("!HH", tcp[:4])
        payload = tcp[(tcp[12] >> 4) * 4 :]
        if dport in self.ports and payload and (sport, dport) not in self.first_payloads:
            self.first_payloads[(sport, dport)] = payload[:16]
