"""Video files in and out with OpenCV: RGB uint8 frames, the source fps kept, atomic writes."""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .utils.atomic import atomic_path

__all__ = ["VIDEO_EXTENSIONS", "VideoReadError", "VideoInfo", "is_stream", "video_info", "read_frames", "VideoWriter"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")
# Codecs every OpenCV build with FFmpeg can write into each container.
_FOURCC = {".mp4": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}


class VideoReadError(ValueError):
    """A video file that is missing, unreadable or corrupt; the message names the file."""


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    width: int
    height: int
    frames: int  # as the container reports it; may be approximate


def is_stream(source: str | os.PathLike | int) -> bool:
    """A camera index (``0``) or a URL (``rtsp://...``) rather than a file."""
    text = str(source)
    return text.isdigit() or "://" in text


def _open(source: str | os.PathLike | int) -> cv2.VideoCapture:
    text = str(source)
    if not is_stream(text) and not Path(text).is_file():
        raise VideoReadError(f"{text}: no such file")
    cap = cv2.VideoCapture(int(text) if text.isdigit() else text)
    if not cap.isOpened():
        raise VideoReadError(f"{text}: cannot open video (corrupt or unsupported format, or no such stream)")
    return cap


def video_info(source: str | os.PathLike | int) -> VideoInfo:
    """Frame rate, size and frame count (0 for a stream: unknown) of a video file or stream."""
    cap = _open(source)
    try:
        info = VideoInfo(fps=float(cap.get(cv2.CAP_PROP_FPS) or 0.0), width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                         height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                         frames=0 if is_stream(source) else max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT))))
    finally:
        cap.release()
    if info.width <= 0 or info.height <= 0:
        raise VideoReadError(f"{source}: video has no readable frame size")
    return info


def read_frames(source: str | os.PathLike | int, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Decode a video file or stream to ``(H, W, 3)`` uint8 RGB frames (the first ``max_frames``); a source
    that yields no frame is an error."""
    cap = _open(source)
    n = 0
    try:
        while max_frames is None or n < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            n += 1
            yield np.ascontiguousarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    if n == 0:
        raise VideoReadError(f"{source}: no frame could be decoded (corrupt or empty video)")


class VideoWriter:
    """Write RGB uint8 frames to ``path`` (codec from the extension); the file appears only on success.

    >>> with VideoWriter("out.mp4", fps=25, size=(640, 480)) as w:  # doctest: +SKIP
    ...     w.write(frame)
    """

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int]) -> None:
        self.path, self.fps, self.size = Path(path), float(fps) if fps and fps > 0 else 25.0, tuple(size)
        ext = self.path.suffix.lower()
        if ext not in _FOURCC:
            raise ValueError(f"{self.path}: unsupported video extension {ext!r}; use one of {', '.join(_FOURCC)}")
        self._fourcc = cv2.VideoWriter_fourcc(*_FOURCC[ext])
        self._ctx = self._writer = None
        self.count = 0

    def __enter__(self) -> "VideoWriter":
        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        self._writer = cv2.VideoWriter(str(tmp), self._fourcc, self.fps, self.size)
        if not self._writer.isOpened():
            self._ctx.__exit__(OSError, OSError(), None)
            raise OSError(f"{self.path}: OpenCV cannot write this video format")
        return self

    def write(self, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        if (w, h) != self.size or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"{self.path}: frames must be {self.size[1]}x{self.size[0]}x3 uint8, "
                             f"got {frame.shape} {frame.dtype}")
        self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        self.count += 1

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._writer.release()
        return bool(self._ctx.__exit__(exc_type, exc, tb))
