"""TensorBoard event files read and written by the report without TensorBoard's reader and
writer: ``EventAccumulator`` and ``EventFileWriter`` cost a third of ``make report``'s time
(a reservoir per tag and a writer thread per file, and ``tensorboard.summary``'s import pulls
in its TensorFlow stub and fsspec), where the report needs only the scalars of finished runs.

An event file is a TFRecord file: per record a little-endian uint64 length, its masked
CRC-32C, the serialized ``Event`` proto and the data's masked CRC-32C. Reading stops at the
first truncated or corrupt record of a file, as TensorBoard's loader does.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event, SessionLog, SourceMetadata

Scalar = tuple[float, int, float]  # (wall time, step, value)


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)  # Castagnoli, reflected
        table.append(crc)
    return table


CRC_TABLE = _crc_table()


def masked_crc32c(data: bytes, table: list[int] = CRC_TABLE) -> int:
    """The CRC-32C of ``data``, masked as TFRecord stores it."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def records(path: Path) -> Iterator[bytes]:
    """The records of a TFRecord file, up to its first truncated or corrupt one."""
    data = path.read_bytes()
    pos, end = 0, len(data)
    while pos + 12 <= end:
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        start = pos + 12
        if start + length + 4 > end:
            return  # truncated: a writer may still be appending it
        (header_crc,) = struct.unpack_from("<I", data, pos + 8)
        payload = data[start : start + length]
        (payload_crc,) = struct.unpack_from("<I", data, start + length)
        if masked_crc32c(header) != header_crc or masked_crc32c(payload) != payload_crc:
            return
        yield payload
        pos = start + length + 4


def event_files(folder: Path) -> list[Path]:
    """The event files TensorBoard reads in a run's folder, in the order it reads them."""
    found = (p for p in folder.iterdir() if "tfevents" in p.name and p.is_file())
    return sorted((p for p in found if not p.name.endswith(".profile-empty")), key=str)


def file_version(event: Event) -> float:
    try:
        return float(event.file_version.split("brain.Event:")[-1])
    except ValueError:
        return -1


def folder_scalars(folder: Path) -> dict[str, list[Scalar]]:
    """The scalars (``simple_value``) of one folder's event files, as TensorBoard's
    ``EventAccumulator`` keeps them: a restart (SessionLog START, or with files before
    version 2 a step going back) drops the values it orphaned."""
    scalars: dict[str, list[Scalar]] = {}
    version, latest_step = None, -1
    for path in event_files(folder):
        for record in records(path):
            event = Event.FromString(record)
            if event.file_version:
                version = file_version(event)
            if version is not None and version >= 2:
                if event.session_log.status == SessionLog.START:
                    for tag, kept in scalars.items():
                        scalars[tag] = [s for s in kept if s[1] < event.step]
            elif event.step < latest_step and event.HasField("summary"):
                for tag in {value.tag for value in event.summary.value} & scalars.keys():
                    scalars[tag] = [s for s in scalars[tag] if s[1] < event.step]
            else:
                latest_step = event.step
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalar = (event.wall_time, event.step, value.simple_value)
                    scalars.setdefault(value.tag, []).append(scalar)
    return scalars


_file_count = itertools.count()


def write_events(folder: Path, events: Iterable[Event]) -> Path:
    """A new event file in ``folder``, named and begun as TensorBoard's writer does (its
    file version first), holding ``events``."""
    # TensorBoard's writer's name: the second since the epoch, the host, the process, a count.
    stamp = f"{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_file_count)}"
    name = f"events.out.tfevents.{stamp}"
    writer = SourceMetadata(writer="slowlearn.report")
    first = Event(wall_time=time.time(), file_version="brain.Event:2", source_metadata=writer)
    chunks = []
    for event in itertools.chain([first], events):
        payload = event.SerializeToString()
        header = struct.pack("<Q", len(payload))
        chunks += [header, struct.pack("<I", masked_crc32c(header)), payload]
        chunks.append(struct.pack("<I", masked_crc32c(payload)))
    path = folder / name
    path.write_bytes(b"".join(chunks))
    return path
