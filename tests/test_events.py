"""The report's own event-file reader and writer against TensorBoard's: the same scalars as
``EventAccumulator`` (restarts, truncated and corrupt records included), and files that
TensorBoard reads back."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as theirs
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from slowlearn.report.events import folder_scalars, masked_crc32c, records, write_events
from slowlearn.report.runs import read_scalars


def accumulated(folder: Path) -> dict[str, list[tuple[float, int, float]]]:
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: [(e.wall_time, e.step, e.value) for e in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def scalar_event(step: int, wall_time: float, **values: float) -> Event:
    summary = Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in values.items()])
    return Event(wall_time=wall_time, step=step, summary=summary)


def tensorboard_file(folder: Path, events: list[Event]) -> Path:
    writer = EventFileWriter(str(folder))
    for event in events:
        writer.add_event(event)
    writer.close()
    return Path(writer._file_name)


def raw_file(path: Path, events: list[Event]) -> Path:
    """Records with no file-version event first: TensorBoard then purges by out-of-order
    steps."""
    chunks = []
    for event in events:
        payload = event.SerializeToString()
        header = struct.pack("<Q", len(payload))
        chunks += [header, struct.pack("<I", theirs(header)), payload]
        chunks.append(struct.pack("<I", theirs(payload)))
    path.write_bytes(b"".join(chunks))
    return path


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 63, 100, 1000])
def test_the_crc_is_tensorboards(size: int) -> None:
    data = bytes((31 * i + size) % 256 for i in range(size))
    assert masked_crc32c(data) == theirs(data)


def test_scalars_across_files_and_a_restart_are_tensorboards(tmp_path: Path) -> None:
    first = [scalar_event(step, 100 + step, a=step / 10, b=-step) for step in range(10)]
    histogram = Summary(value=[Summary.Value(tag="h", histo=HistogramProto(min=0, max=1))])
    first.append(Event(wall_time=111, step=10, summary=histogram))
    tensorboard_file(tmp_path, first)
    # A resumed writer session: START at step 6 orphans the first session's steps 6 to 9.
    restart = Event(wall_time=200, step=6, session_log=SessionLog(status=SessionLog.START))
    second = [restart, *(scalar_event(step, 200 + step, a=step) for step in range(6, 12))]
    tensorboard_file(tmp_path, second)
    ours = folder_scalars(tmp_path)
    assert ours == accumulated(tmp_path)
    assert [step for _, step, _ in ours["a"]] == [*range(6), *range(6, 12)]
    assert read_scalars(tmp_path)["b"] == [(step, -step) for step in range(6)]


def test_steps_going_back_without_a_file_version_are_purged_as_tensorboard_does(
    tmp_path: Path,
) -> None:
    events = [scalar_event(step, step, a=step, b=step) for step in range(8)]
    events += [scalar_event(step, 10 + step, a=100 + step) for step in range(4, 9)]
    raw_file(tmp_path / "events.out.tfevents.1.host.1.0", events)
    ours = folder_scalars(tmp_path)
    assert ours == accumulated(tmp_path)
    assert [v for _, _, v in ours["a"]] == [0, 1, 2, 3, 104, 105, 106, 107, 108]
    assert len(ours["b"]) == 8  # not in the out-of-order events: kept


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_reading_stops_at_a_damaged_record_as_tensorboard_does(tmp_path: Path, damage: str) -> None:
    path = tensorboard_file(tmp_path, [scalar_event(s, s, a=s) for s in range(20)])
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        del data[-7:]  # a writer still appending the last record
    else:
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    ours = folder_scalars(tmp_path)
    assert ours == accumulated(tmp_path)
    assert 0 < len(ours["a"]) < 20


def test_written_events_read_back_in_tensorboard(tmp_path: Path) -> None:
    events = [scalar_event(step, 50 + step, mean=step / 3, low=-1.5) for step in range(30)]
    path = write_events(tmp_path, events)
    assert path.name.startswith("events.out.tfevents.")
    assert folder_scalars(tmp_path) == accumulated(tmp_path)
    assert len(list(records(path))) == len(events) + 1  # the file version first
    first = Event.FromString(next(records(path)))
    assert first.file_version == "brain.Event:2"


def test_a_real_runs_scalars_are_tensorboards(single_run: Path) -> None:
    assert folder_scalars(single_run) == accumulated(single_run)
