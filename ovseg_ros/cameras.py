"""The cameras one segmenter serves: their namespaces and input topics, as the `cameras` node
parameter and the `cameras:=` launch argument write them. Imports neither rclpy nor launch.

One camera is `NAMESPACE:IMAGE[:DEPTH[:CAMERA_INFO]]`, e.g.
`front:/front/color/image_raw:/front/aligned_depth_to_color/image_raw`. The camera's results
are published under `NAMESPACE/<node name>/` (`/front/ovseg_segmenter/result`), the topics one
segmenter node per camera would have in that namespace. Without CAMERA_INFO, a camera with depth
reads the `camera_info` beside its image topic (`/front/color/camera_info`), as image_transport's
camera subscribers do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = r"[A-Za-z_][A-Za-z0-9_]*"
NAME_PATTERN = re.compile(rf"/?{_TOKEN}(/{_TOKEN})*")
"""A ROS namespace or topic name: tokens of letters, digits and '_' (not starting with a digit)
separated by '/', optionally absolute."""

CAMERA_FORMAT = "NAMESPACE:IMAGE[:DEPTH[:CAMERA_INFO]]"


@dataclass(frozen=True)
class CameraTopics:
    """One camera: namespace (relative names resolve in the node's namespace), input topics;
    depth and camera_info are "" for a camera without depth."""

    namespace: str
    image: str
    depth: str = ""
    camera_info: str = ""

    @property
    def has_depth(self) -> bool:
        return bool(self.depth)

    def spec(self) -> str:
        """The camera as NAMESPACE:IMAGE[:DEPTH:CAMERA_INFO] (parse_camera reads it back)."""
        topics = [self.namespace, self.image]
        if self.has_depth:
            topics += [self.depth, self.camera_info]
        return ":".join(topics)


def check_name(what: str, name: str) -> None:
    """Raises ValueError naming `what` unless `name` is a valid ROS name (NAME_PATTERN)."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"{what} {name!r} is not a valid ROS name (tokens of letters, digits and '_', "
            "not starting with a digit, separated by '/')"
        )


def join_namespace(base: str, namespace: str) -> str:
    """The absolute namespace: `namespace` if absolute, else under `base` ('' or '/' = root)."""
    namespace = namespace.strip()
    if namespace.startswith("/"):
        return namespace.rstrip("/") or "/"
    parts = [part for part in (base.strip().strip("/"), namespace.strip("/")) if part]
    return "/" + "/".join(parts)


def sibling_camera_info(image: str) -> str:
    """The camera_info topic beside an image topic: /cam/color/image_raw ->
    /cam/color/camera_info."""
    head, slash, _ = image.rpartition("/")
    return f"{head}{slash}camera_info"


def parse_camera(item: str) -> CameraTopics:
    """`NAMESPACE:IMAGE[:DEPTH[:CAMERA_INFO]]` -> CameraTopics; raises ValueError saying what is
    wrong with the item."""
    parts = [part.strip() for part in item.split(":")]
    if not 2 <= len(parts) <= 4 or not all(parts):
        raise ValueError(
            f"camera {item.strip()!r} is not {CAMERA_FORMAT} "
            "(e.g. front:/front/color/image_raw:/front/aligned_depth_to_color/image_raw)"
        )
    whats = ("namespace", "image topic", "depth topic", "camera_info topic")
    for what, name in zip(whats, parts, strict=False):
        check_name(f"camera {item.strip()!r}: {what}", name)
    namespace, image, *depth = parts
    if not depth:
        return CameraTopics(namespace, image)
    camera_info = depth[1] if len(depth) == 2 else sibling_camera_info(image)
    return CameraTopics(namespace, image, depth[0], camera_info)


def parse_cameras(items: list[str], namespace: str = "/") -> list[CameraTopics]:
    """Each item as parse_camera; raises ValueError when one is invalid or two have the same
    namespace once relative ones are resolved in `namespace` (the node's): their outputs would
    collide."""
    cameras: list[CameraTopics] = []
    seen: set[str] = set()
    for item in items:
        camera = parse_camera(item)
        resolved = join_namespace(namespace, camera.namespace)
        if resolved in seen:
            raise ValueError(
                f"camera namespace {resolved!r} is given twice; each camera needs a namespace "
                "of its own (its results are published there)"
            )
        seen.add(resolved)
        cameras.append(camera)
    return cameras
