"""Recordings: reading ROS 2 bags (ovseg_ros.recordings) and `ovseg segment RECORDING`, on small
bags written here with rosbags from toy-world frames, raw rgb8 in MCAP and JPEG in sqlite3."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from ament_index_python.packages import get_package_share_directory
from builtin_interfaces.msg import Time
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.rosbag2 import Reader, Writer
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import CompressedImage
from std_msgs.msg import Header, String
from tiny_model import TINY_CHECKPOINT

from ovseg_ros import cli, recordings
from ovseg_ros.cli import main
from ovseg_ros.engine import toy_world
from ovseg_ros.engine.vocabulary import VocabularyEncoder
from ovseg_ros.recordings import (
    RecordingError,
    RecordingWriter,
    open_recording,
    project_typestore,
)
from ovseg_ros.ros.conversions import array_to_image, compressed_to_rgb

TOPIC = "/cam/image_raw"
FRAME_ID = "cam_optical"
START_NS = 1_700_000_000_000_000_000
PERIOD_NS = 100_000_000
"""Frames 0.1 s apart in bag time; each header stamp is 30 ms before its bag timestamp."""
STAMP_LAG_NS = 30_000_000
VOCAB = ",".join(toy_world.shape_classes())
MODEL = ["--checkpoint", str(TINY_CHECKPOINT), "--device", "cpu"]
OUT_TOPICS = {
    "/ovseg_segmenter/labels": "sensor_msgs/msg/Image",
    "/ovseg_segmenter/result": "ovseg_ros/msg/SegmentationResult",
    "/ovseg_segmenter/overlay": "sensor_msgs/msg/Image",
    "/ovseg_segmenter/vocabulary": "ovseg_ros/msg/Vocabulary",
}


def scenes(count: int) -> list[np.ndarray]:
    """`count` toy-world frames, (240, 320, 3) uint8 RGB."""
    return [toy_world.generate_scene(toy_world.EVAL_SEEDS.start + i).image for i in range(count)]


def header(index: int) -> Header:
    sec, nanosec = divmod(START_NS + index * PERIOD_NS - STAMP_LAG_NS, 1_000_000_000)
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=FRAME_ID)


def raw_frame(index: int, rgb: np.ndarray) -> bytes:
    return serialize_message(array_to_image(rgb, "rgb8", header(index)))


def jpeg_frame(index: int, rgb: np.ndarray) -> bytes:
    data = cv2.imencode(".jpg", rgb[..., ::-1])[1].tobytes()
    return serialize_message(CompressedImage(header=header(index), format="jpeg", data=data))


def write_bag(path: Path, storage: str, msgtype: str, frames: list[bytes]) -> Path:
    """A bag folder at `path` (storage "mcap" or "sqlite3") with `frames` (serialized) on TOPIC,
    frame i at START_NS + i * PERIOD_NS, and a std_msgs/String on /note; returns its one file."""
    plugin = recordings.STORAGES[storage]
    typestore = get_typestore(Stores.LATEST)
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        images = writer.add_connection(TOPIC, msgtype, typestore=typestore)
        note = writer.add_connection("/note", "std_msgs/msg/String", typestore=typestore)
        writer.write(note, START_NS, serialize_message(String(data="start")))
        for index, data in enumerate(frames):
            writer.write(images, START_NS + index * PERIOD_NS, data)
    return next(path.glob("*.mcap" if storage == "mcap" else "*.db3"))


def read_bag(path: Path) -> dict[str, list[tuple[int, object]]]:
    """Topic -> [(bag timestamp, message deserialized by rosbags with the project's types)]."""
    typestore = project_typestore()
    found: dict[str, list[tuple[int, object]]] = {}
    with Reader(path) as reader:
        assert {c.topic: c.msgtype for c in reader.connections} == OUT_TOPICS
        for connection, timestamp, data in reader.messages():
            message = typestore.deserialize_cdr(data, connection.msgtype)
            found.setdefault(connection.topic, []).append((timestamp, message))
    return found


def expected_labels(rgbs: list[np.ndarray]) -> list[np.ndarray]:
    """The labels of each frame segmented alone, by the segmenter `ovseg segment` builds."""
    args = cli.build_parser().parse_args(["segment", "x.png", "--vocab", VOCAB, *MODEL])
    segmenter = cli._build(args)
    vocabulary = VocabularyEncoder(segmenter.clip).encode(
        cli._vocabulary(VOCAB), cli._templates(args)
    )
    return [segmenter.segment(rgb, vocabulary).labels for rgb in rgbs]


def stamp_ns(message: object) -> int:
    return message.header.stamp.sec * 1_000_000_000 + message.header.stamp.nanosec


def check_output(out: Path, indices: list[int], labels: list[np.ndarray]) -> None:
    """One labels image, result and overlay per input frame `indices`, at the input's bag
    timestamp, header stamp and frame_id; labels as given; the vocabulary once, first."""
    found = read_bag(out)
    times = [START_NS + i * PERIOD_NS for i in indices]
    (vocabulary_time, vocabulary), *more = found["/ovseg_segmenter/vocabulary"]
    assert not more and vocabulary_time == times[0] and stamp_ns(vocabulary) == times[0]
    assert vocabulary.class_names == toy_world.shape_classes() and vocabulary.version == 1
    assert len(vocabulary.colors) == len(vocabulary.class_names)
    for name in ("labels", "result", "overlay"):
        messages = found[f"/ovseg_segmenter/{name}"]
        assert [t for t, _ in messages] == times, name
        assert [stamp_ns(m) for _, m in messages] == [t - STAMP_LAG_NS for t in times], name
        assert {m.header.frame_id for _, m in messages} == {FRAME_ID}, name
    for (_, image), (_, result), (_, overlay), want in zip(
        found["/ovseg_segmenter/labels"],
        found["/ovseg_segmenter/result"],
        found["/ovseg_segmenter/overlay"],
        labels,
        strict=True,
    ):
        assert (image.encoding, image.height, image.width) == ("mono16", 240, 320)
        got = np.frombuffer(image.data, np.uint16).reshape(240, 320)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(np.frombuffer(result.labels.data, np.uint16), want.ravel())
        assert result.class_names == toy_world.shape_classes()
        assert (overlay.encoding, overlay.height, overlay.width) == ("rgb8", 240, 320)


# --- reading ------------------------------------------------------------------------------


def test_reader_streams_the_frames_of_an_image_topic_with_their_headers(tmp_path):
    frames = [raw_frame(i, rgb) for i, rgb in enumerate(scenes(1) * 6)]
    file = write_bag(tmp_path / "run", "mcap", "sensor_msgs/msg/Image", frames)
    for path in (file, tmp_path / "run"):  # the single file, and the bag folder
        with open_recording(path) as recording:
            assert recording.storage == "mcap"
            assert recording.topics() == {"/cam/image_raw": "sensor_msgs/msg/Image",
                                          "/note": "std_msgs/msg/String"}  # fmt: skip
            assert recording.image_topics() == {TOPIC: "sensor_msgs/msg/Image"}
            assert recording.message_count == 7 and recording.start_ns == START_NS
            assert recording.duration_s == pytest.approx(0.5)
            assert recording.frame_rate(TOPIC) == pytest.approx(10.0)
            got = list(recording.frames(TOPIC))
            assert [f.timestamp_ns for f in got] == [START_NS + i * PERIOD_NS for i in range(6)]
            assert [f.stamp_ns for f in got] == [f.timestamp_ns - STAMP_LAG_NS for f in got]
            assert {f.frame_id for f in got} == {FRAME_ID}
            assert [f.data for f in got] == frames
            assert {f.msgtype for f in got} == {"sensor_msgs/msg/Image"}


@pytest.mark.parametrize(
    ("start_s", "end_s", "every", "indices"),
    [
        (None, None, 2, [0, 2, 4]),
        (0.1, 0.35, 1, [1, 2, 3]),
        (0.1, None, 3, [1, 4]),
        (None, 0.05, 1, [0]),
        (0.6, None, 1, []),
    ],
)
def test_frames_keep_a_time_window_and_every_nth(tmp_path, start_s, end_s, every, indices):
    frames = [raw_frame(i, np.zeros((4, 4, 3), np.uint8)) for i in range(6)]
    write_bag(tmp_path / "run", "sqlite3", "sensor_msgs/msg/Image", frames)
    with open_recording(tmp_path / "run") as recording:
        assert recording.storage == "sqlite3"
        got = [f.timestamp_ns for f in recording.frames(TOPIC, start_s, end_s, every)]
        assert got == [START_NS + i * PERIOD_NS for i in indices]
        assert recording.expected_frames(TOPIC, start_s, end_s, every) == len(indices)


def test_a_topic_that_is_missing_or_no_image_topic_names_the_image_topics(tmp_path):
    write_bag(tmp_path / "run", "mcap", "sensor_msgs/msg/Image", [])
    with open_recording(tmp_path / "run") as recording:
        with pytest.raises(RecordingError) as missing:
            recording.frames("/camera/image")
        with pytest.raises(RecordingError) as other:
            recording.frames("/note")
        with pytest.raises(ValueError, match="every must be at least 1"):
            recording.frames(TOPIC, every=0)
        assert list(recording.frames(TOPIC)) == []
    assert str(missing.value) == (
        f"{tmp_path / 'run'} has no topic /camera/image; its image topics: /cam/image_raw "
        "(0 x Image)"
    )
    assert "has /note as std_msgs/msg/String, not an image; its image topics: /cam/image_raw" in (
        str(other.value)
    )


def test_paths_that_are_no_readable_recording_say_so(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "junk.mcap").write_bytes(b"not an mcap file at all")
    (tmp_path / "empty.db3").write_bytes(b"")
    with pytest.raises(RecordingError, match="no such file or folder"):
        open_recording(tmp_path / "missing.mcap")
    with pytest.raises(RecordingError, match="is not a ROS 2 recording .a bag folder"):
        open_recording(tmp_path / "folder")
    for name in ("junk.mcap", "empty.db3"):
        with pytest.raises(RecordingError, match=f"{name} cannot be read as a ROS 2 recording"):
            open_recording(tmp_path / name)


def test_writer_registers_the_project_messages_from_their_msg_files(tmp_path):
    """Their type hashes are those rosidl generated (share/ovseg_ros/msg/*.json), so ros2 bag
    and Foxglove see the same types as a node's."""
    typestore = project_typestore()
    types = [("ovseg_ros", name) for name in recordings.PROJECT_MESSAGES]
    for package, name in [*types, ("sensor_msgs", "Image"), ("sensor_msgs", "CompressedImage")]:
        path = Path(get_package_share_directory(package)) / "msg" / f"{name}.json"
        generated = json.loads(path.read_text())["type_hashes"][0]
        assert typestore.hash_rihs01(generated["type_name"]) == generated["hash_string"]
    assert cli.RECORDING_STORAGES == tuple(recordings.STORAGES)
    with pytest.raises(ValueError, match="storage must be one of mcap, sqlite3"):
        RecordingWriter(tmp_path / "out", "rosbag1")
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="exists already"):
        RecordingWriter(tmp_path / "taken", "mcap")


# --- ovseg segment RECORDING --------------------------------------------------------------


def test_segment_mcap_of_raw_frames_gives_the_labels_of_each_frame_alone(tmp_path, capsys):
    rgbs = scenes(3)
    file = write_bag(
        tmp_path / "run",
        "mcap",
        "sensor_msgs/msg/Image",
        [raw_frame(i, x) for i, x in enumerate(rgbs)],
    )
    out = tmp_path / "out"
    args = ["segment", str(file), "--topic", TOPIC, "--vocab", VOCAB, "--out", str(out), *MODEL]
    assert main(args) == 0
    assert (out / "out.mcap").is_file()
    check_output(out, [0, 1, 2], expected_labels(rgbs))
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{out}: 3 frames of {file} {TOPIC} segmented, 0 skipped (")


def test_segment_sqlite3_of_jpeg_frames_keeps_its_storage(tmp_path, capsys):
    rgbs = scenes(3)
    frames = [jpeg_frame(i, x) for i, x in enumerate(rgbs)]
    write_bag(tmp_path / "run", "sqlite3", "sensor_msgs/msg/CompressedImage", frames)
    out = tmp_path / "out"
    # the one image topic is taken without --topic
    assert (
        main(["segment", str(tmp_path / "run"), "--vocab", VOCAB, "--out", str(out), *MODEL]) == 0
    )
    assert (out / "out.db3").is_file()
    decoded = [compressed_to_rgb(deserialize_message(f, CompressedImage)) for f in frames]
    check_output(out, [0, 1, 2], expected_labels(decoded))


def test_segment_every_start_end_storage_and_video(tmp_path, capsys):
    rgbs = scenes(6)
    file = write_bag(
        tmp_path / "run",
        "mcap",
        "sensor_msgs/msg/Image",
        [raw_frame(i, x) for i, x in enumerate(rgbs)],
    )
    out, video = tmp_path / "out", tmp_path / "overlay.mp4"
    options = ["--every", "2", "--start", "0.1", "--end", "0.5", "--storage", "sqlite3"]
    args = ["segment", str(file), "--vocab", VOCAB, "--out", str(out), "--video", str(video)]
    assert main([*args, *options, *MODEL]) == 0
    assert (out / "out.db3").is_file()
    check_output(out, [1, 3], expected_labels([rgbs[1], rgbs[3]]))
    capture = cv2.VideoCapture(str(video))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 2
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(5.0)  # 10 frames/s, every 2nd
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (
        320,
        240,
    )
    assert "overlay video" in capsys.readouterr().out


def test_frames_of_an_unknown_encoding_are_skipped_with_one_line_each(tmp_path, capsys):
    rgbs = scenes(3)
    odd = array_to_image(rgbs[1], "rgb8", header(1))
    odd.encoding = "yuv422"
    malformed = b"\x00\x01\x00\x00 not an image"
    frames = [raw_frame(0, rgbs[0]), serialize_message(odd), malformed, raw_frame(3, rgbs[2])]
    file = write_bag(tmp_path / "run", "mcap", "sensor_msgs/msg/Image", frames)
    with open_recording(file) as recording:
        broken = list(recording.frames(TOPIC))[2]
        assert (broken.stamp_ns, broken.frame_id, broken.data) == (None, None, malformed)
    out = tmp_path / "out"
    assert main(["segment", str(file), "--vocab", VOCAB, "--out", str(out), *MODEL]) == 1
    check_output(out, [0, 3], expected_labels([rgbs[0], rgbs[2]]))
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if "skipped" in line]
    assert skipped[0] == (
        "ovseg segment: skipped the frame at 0.100 s: unsupported image encoding 'yuv422'; "
        "supported: rgb8, bgr8, rgba8, bgra8, mono8, mono16"
    )
    assert skipped[1].startswith(
        "ovseg segment: skipped the frame at 0.200 s: not a valid sensor_msgs/msg/Image: "
    )
    assert len(skipped) == 2
    assert "2 frames of" in captured.out and "segmented, 2 skipped" in captured.out


def test_recording_arguments_are_checked_before_a_model_loads(tmp_path, monkeypatch, capsys):
    def no_model(args):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(cli, "_build", no_model)
    file = write_bag(tmp_path / "run", "mcap", "sensor_msgs/msg/Image", [])
    (tmp_path / "taken").mkdir()
    scene = tmp_path / "scene.png"
    cv2.imwrite(str(scene), scenes(1)[0])
    base = ["segment", str(file), "--vocab", VOCAB, *MODEL]
    for extra, message in [
        (["--topic", "/camera/image"], "has no topic /camera/image; its image topics: "
                                       "/cam/image_raw (0 x Image)"),
        (["--out", str(tmp_path / "taken")], "taken exists already; give another --out"),
        (["--video", str(tmp_path / "v.gif")], "give a .mp4, .avi, .mkv file"),
        (["--start", "2", "--end", "1"], "the end (1.0 s) comes before the start (2.0 s)"),
    ]:  # fmt: skip
        assert main([*base, "--out", str(tmp_path / "out"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ovseg segment: error: ") and message in err, err
    assert main(["segment", str(scene), "--topic", TOPIC, "--vocab", VOCAB]) == 2
    assert "--topic: only for a recording" in capsys.readouterr().err
    assert main(["segment", str(file), str(scene), "--vocab", VOCAB]) == 2
    assert "give one recording at a time" in capsys.readouterr().err
    assert main(["segment", str(file), "--start", "-1", "--vocab", VOCAB]) == 2
    assert "argument --start: must be 0 or more, got -1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_empty_time_window_writes_no_bag(tmp_path, capsys):
    file = write_bag(
        tmp_path / "run", "mcap", "sensor_msgs/msg/Image", [raw_frame(0, scenes(1)[0])]
    )
    out = tmp_path / "out"
    args = ["segment", str(file), "--start", "5", "--vocab", VOCAB, "--out", str(out), *MODEL]
    assert main(args) == 2
    assert "no frames of /cam/image_raw from --start to --end" in capsys.readouterr().err
    assert not out.exists()


# --- broken recordings --------------------------------------------------------------------


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_a_truncated_recording_is_a_clear_error_before_any_model_loads(
    tmp_path, storage, monkeypatch, capsys
):
    def no_model(args):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(cli, "_build", no_model)
    frames = [raw_frame(i, rgb) for i, rgb in enumerate(scenes(1) * 6)]
    file = write_bag(tmp_path / "run", storage, "sensor_msgs/msg/Image", frames)
    cut = tmp_path / f"cut{file.suffix}"
    cut.write_bytes(file.read_bytes()[: file.stat().st_size * 6 // 10])
    out = tmp_path / "out"
    assert main(["segment", str(cut), "--vocab", VOCAB, "--out", str(out), *MODEL]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"ovseg segment: error: {cut} cannot be read as a ROS 2 recording (truncated or corrupt?): "
    )
    assert err.count("\n") == 1 and not out.exists()


def test_a_recording_corrupt_midway_leaves_a_valid_bag_of_the_frames_before(tmp_path, capsys):
    rgbs = scenes(6)
    frames = [raw_frame(i, rgb) for i, rgb in enumerate(rgbs)]
    file = write_bag(tmp_path / "run", "sqlite3", "sensor_msgs/msg/Image", frames)
    data = bytearray(file.read_bytes())
    middle = len(data) * 6 // 10
    data[middle : middle + 4096] = b"\xff" * 4096  # inside a frame's overflow pages
    file.write_bytes(bytes(data))
    with open_recording(file) as recording:
        frames_read = []
        with pytest.raises(RecordingError, match="breaks off after") as broken:
            for frame in recording.frames(TOPIC):
                frames_read.append(frame)
    good = len(frames_read)
    assert 0 < good < 6
    assert str(broken.value).startswith(
        f"{file}: breaks off after {good} messages of {TOPIC}: CorruptError: "
    )
    out = tmp_path / "out"
    assert main(["segment", str(file), "--vocab", VOCAB, "--out", str(out), *MODEL]) == 2
    check_output(out, list(range(good)), expected_labels(rgbs[:good]))
    captured = capsys.readouterr()
    assert f"{good} frames of {file} {TOPIC} segmented, 0 skipped" in captured.out
    assert captured.err.splitlines()[-1] == (
        f"ovseg segment: error: {broken.value}; {out} holds the frames before it"
    )
