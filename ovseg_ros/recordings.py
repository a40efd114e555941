"""ROS 2 recordings (bags) in and out, through rosbags: no ROS install and no `ros2 bag` needed.

A recording is a bag folder (metadata.yaml and its .mcap or .db3 files, as `ros2 bag record`
writes it) or a single .mcap or .db3 file. Messages stay serialized (CDR, as
rclpy.serialization.deserialize_message takes and serialize_message gives them); this module
only moves them in and out of the container.

    with open_recording("run1") as recording:
        print(recording.image_topics())  # {"/cam/image_raw": "sensor_msgs/msg/Image"}
        for frame in recording.frames("/cam/image_raw", start_s=10.0, every=5):
            image = deserialize_message(frame.data, Image)

    with RecordingWriter("out", "mcap") as writer:
        writer.add_topic("/ovseg_segmenter/result", "ovseg_ros/msg/SegmentationResult")
        writer.write("/ovseg_segmenter/result", timestamp_ns, serialize_message(result))

Frames are read one at a time (memory stays flat over any length of recording). A recording
that cannot be opened, a topic it does not have, and one that breaks off while being read
(truncated or corrupt) raise RecordingError, one line saying which and why.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from rosbags.interfaces import (
    Connection,
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

if TYPE_CHECKING:
    from typing import Self  # Python 3.11; annotations are not evaluated

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
"""The message types a recording's camera topics can have."""
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
"""Storage formats by the names `ros2 bag` gives them (-s / storage_identifier)."""
FILE_STORAGES = {".mcap": "mcap", ".db3": "sqlite3"}
"""Storage of a single-file recording, by its suffix."""
PROJECT_MESSAGES = ("Segment", "SegmentationResult", "Vocabulary")
"""The project's own message types (msg/*.msg), registered for the connections that carry them."""
BAG_VERSION = 8
"""rosbag2 metadata version written: the older of the two rosbags writes, for older readers (9
differs only in how QoS profiles are kept)."""


class _ClosedOnExit:
    """A `with` block closes the object (close()) on leaving, whatever ends it."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class RecordingError(ValueError):
    """A path that is no readable recording, a topic the recording does not have, or a recording
    that breaks off while it is read (truncated or corrupt)."""


def is_recording(path: Path) -> bool:
    """Whether `path` names a recording: a folder with metadata.yaml, or a .mcap or .db3 file."""
    if path.is_dir():
        return (path / "metadata.yaml").is_file()
    return path.suffix in FILE_STORAGES


def storage_of(path: Path) -> str:
    """The storage of a recording, "mcap" or "sqlite3" (a folder's by its files' suffix)."""
    if path.is_dir():
        return "mcap" if any(path.glob("*.mcap*")) else "sqlite3"
    return FILE_STORAGES[path.suffix]


@dataclass(frozen=True)
class Frame:
    """One image message of a recording, still serialized.

    timestamp_ns: when it was recorded (the bag's timestamp), ns since the epoch.
    stamp_ns, frame_id: its header; None when the message is too malformed to read them.
    msgtype: one of IMAGE_TYPES.
    data: the CDR bytes, encapsulation header included.
    """

    timestamp_ns: int
    stamp_ns: int | None
    frame_id: str | None
    msgtype: str
    data: bytes


class Recording(_ClosedOnExit):
    """An open recording (see open_recording); close() it, or use it as a context manager.
    Read it from one thread, one frames() iteration at a time (each call starts a new one)."""

    def __init__(self, path: Path, reader: Reader) -> None:
        self.path = path
        self._reader = reader
        self._typestore = get_typestore(Stores.LATEST)

    @property
    def storage(self) -> str:
        """Its storage: "mcap" or "sqlite3"."""
        return storage_of(self.path)

    @property
    def start_ns(self) -> int:
        """Bag timestamp of its first message, ns since the epoch."""
        return self._reader.start_time

    @property
    def duration_s(self) -> float:
        """Seconds from its first message to its last."""
        return max(self._reader.duration - 1, 0) / 1e9  # rosbags counts end_time exclusive

    @property
    def message_count(self) -> int:
        """Messages on all topics."""
        return self._reader.message_count

    def topics(self) -> dict[str, str]:
        """Every topic -> its message type, sorted by topic."""
        return {name: info.msgtype or "?" for name, info in self._reader.topics.items()}

    def image_topics(self) -> dict[str, str]:
        """The topics of sensor_msgs/msg/Image or CompressedImage -> their type."""
        return {name: kind for name, kind in self.topics().items() if kind in IMAGE_TYPES}

    def frame_count(self, topic: str) -> int:
        """Messages on `topic`; RecordingError when it is no image topic of the recording."""
        self._check_topic(topic)
        return self._reader.topics[topic].msgcount

    def frame_rate(self, topic: str) -> float:
        """Mean frames/s of `topic` over the recording (counted over its whole duration); 0.0
        with fewer than 2 frames."""
        count = self.frame_count(topic)
        return (count - 1) / self.duration_s if count > 1 and self.duration_s > 0 else 0.0

    def expected_frames(
        self,
        topic: str,
        start_s: float | None = None,
        end_s: float | None = None,
        every: int = 1,
    ) -> int:
        """How many frames frames() yields with these arguments: exact without start_s and end_s,
        else estimated from the share of the recording's duration the window covers."""
        count = self.frame_count(topic)
        if (start_s is not None or end_s is not None) and self.duration_s > 0:
            start = max(start_s or 0.0, 0.0)
            end = self.duration_s if end_s is None else min(end_s, self.duration_s)
            count = round(count * max(end - start, 0.0) / self.duration_s)
        return -(-count // every)

    def frames(
        self,
        topic: str,
        start_s: float | None = None,
        end_s: float | None = None,
        every: int = 1,
    ) -> Iterator[Frame]:
        """The frames of the image topic `topic` in bag-timestamp order, read one at a time.

        start_s, end_s: only frames recorded in [start_s, end_s) seconds after the recording's
        first message (None: from its start, to its end). every: every N-th of those, the first
        included. Raises RecordingError for a topic that is missing or not an image topic, and,
        while iterating, for a recording that breaks off (the frames yielded before are good).
        Arguments are checked on the call, before the first frame is read.
        """
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        if start_s is not None and end_s is not None and end_s < start_s:
            raise ValueError(f"the end ({end_s} s) comes before the start ({start_s} s)")
        msgtype = self._check_topic(topic)
        if not self.frame_count(topic):
            return iter(())
        start = None if start_s is None else self.start_ns + round(start_s * 1e9)
        stop = None if end_s is None else self.start_ns + round(end_s * 1e9)
        return self._read(topic, msgtype, start, stop, every)

    def _read(
        self, topic: str, msgtype: str, start: int | None, stop: int | None, every: int
    ) -> Iterator[Frame]:
        """frames() once its arguments are checked; start, stop: bag timestamps in ns."""
        connections = self._reader.topics[topic].connections
        messages = self._reader.messages(connections, start=start, stop=stop)
        index = 0
        while True:
            try:
                _, timestamp, data = next(messages)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - rosbags, apsw, struct, zstd: all "corrupt"
                raise RecordingError(
                    f"{self.path}: breaks off after {index} messages of {topic}: "
                    f"{type(exc).__name__}: {exc} (truncated or corrupt recording)"
                ) from exc
            if index % every == 0:
                yield Frame(timestamp, *self._header(data, msgtype), msgtype, bytes(data))
            index += 1

    def _header(self, data: bytes, msgtype: str) -> tuple[int | None, str | None]:
        """(stamp in ns, frame_id) of a serialized image message; (None, None) when malformed."""
        try:
            header = self._typestore.deserialize_cdr(data, msgtype).header
        except Exception:  # noqa: BLE001 - any malformed message: the caller skips it
            return None, None
        return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec, header.frame_id

    def _check_topic(self, topic: str) -> str:
        """The message type of the image topic `topic`; RecordingError naming the recording's
        image topics when it is missing or of another type."""
        topics = self.topics()
        if topics.get(topic) in IMAGE_TYPES:
            return topics[topic]
        listed = [
            f"{name} ({self._reader.topics[name].msgcount} x {kind.rsplit('/', 1)[-1]})"
            for name, kind in self.image_topics().items()
        ]
        found = f"its image topics: {', '.join(listed)}" if listed else "it has no image topics"
        if topic in topics:
            raise RecordingError(
                f"{self.path} has {topic} as {topics[topic]}, not an image; {found}"
            )
        raise RecordingError(f"{self.path} has no topic {topic}; {found}")

    def close(self) -> None:
        self._reader.close()


def open_recording(path: str | Path) -> Recording:
    """The recording at `path`, opened for reading (its index and topics, no messages yet).
    Raises RecordingError for a path that is no recording or cannot be read."""
    path = Path(path)
    if not path.exists():
        raise RecordingError(f"{path}: no such file or folder")
    if not is_recording(path):
        raise RecordingError(
            f"{path} is not a ROS 2 recording (a bag folder with metadata.yaml, or a .mcap or "
            ".db3 file)"
        )
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags, apsw, yaml, OS: one line whatever it is
        raise RecordingError(
            f"{path} cannot be read as a ROS 2 recording (truncated or corrupt?): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return Recording(path, reader)


def message_file(name: str) -> Path:
    """msg/NAME.msg of this package: in the source checkout, or share/ovseg_ros/msg of a ROS
    install (see clip_model.package_roots)."""
    from ovseg_ros.engine.clip_model import package_roots

    candidates = [root / "msg" / f"{name}.msg" for root in package_roots()]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"message definition {name}.msg not found; looked for " + ", ".join(map(str, candidates))
    )


def project_typestore() -> Typestore:
    """rosbags' store of the ROS 2 message types, with this package's own (PROJECT_MESSAGES)
    registered from its .msg files."""
    typestore = get_typestore(Stores.LATEST)
    types = {}
    for name in PROJECT_MESSAGES:
        types.update(get_types_from_msg(message_file(name).read_text(), f"ovseg_ros/msg/{name}"))
    typestore.register(types)
    return typestore


LATCHED = Qos(
    QosHistory.KEEP_LAST,
    1,
    QosReliability.RELIABLE,
    QosDurability.TRANSIENT_LOCAL,
    QosTime(0, 0),
    QosTime(0, 0),
    QosLiveliness.AUTOMATIC,
    QosTime(0, 0),
    False,
)
"""The QoS a latched topic (the node's ~/vocabulary) is offered with: `ros2 bag play` then
republishes it transient-local, so a late subscriber still gets it."""


class RecordingWriter(_ClosedOnExit):
    """A new recording: a bag folder at `path` (which must not exist) in `storage` ("mcap" or
    "sqlite3"). close() it (or use it as a context manager) to finish a valid bag: on an error
    too, so that what was written stays readable."""

    def __init__(self, path: str | Path, storage: str) -> None:
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"{self.path} exists already; give another path or remove it")
        self._typestore = project_typestore()
        self._writer = Writer(self.path, version=BAG_VERSION, storage_plugin=STORAGES[storage])
        self._writer.open()
        self._connections: dict[str, Connection] = {}

    def add_topic(self, topic: str, msgtype: str, latched: bool = False) -> None:
        """Declares `topic` of `msgtype` (e.g. "sensor_msgs/msg/Image"); latched: offered
        transient-local (LATCHED)."""
        self._connections[topic] = self._writer.add_connection(
            topic,
            msgtype,
            typestore=self._typestore,
            offered_qos_profiles=[LATCHED] if latched else [],
        )

    def write(self, topic: str, timestamp_ns: int, data: bytes) -> None:
        """Appends one serialized message (CDR) to a declared topic, at timestamp_ns (ns since
        the epoch)."""
        self._writer.write(self._connections[topic], timestamp_ns, data)

    def close(self) -> None:
        """Writes the index and metadata.yaml."""
        self._writer.close()
