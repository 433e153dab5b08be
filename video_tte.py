"""Video inputs of a TTE model: a list of frames, a folder of frame images or a video file, sampled to a few frames
and fitted to a pixel budget before anything reaches the backbone's video processor.

- `VideoSampling`: how many frames to keep (spread uniformly, or by frames per second with a maximum) and the pixel
  budgets, per frame and per video, so that a long 4K video costs what a short clip costs.
- `load_video`: any accepted form to a `Video` (RGB frames of one size, which source frames they are, the source frame
  rate when known). Every refusal names the input and the problem.

Only the kept frames are ever held in memory: a file is decoded one frame at a time, each kept frame scaled down as
it is converted, and a frame list or folder loads only the frames it keeps.

Video files are decoded with PyAV by default, or with torchcodec (`VideoSampling.backend="torchcodec"`, when it and
FFmpeg's libraries are installed), which seeks to the kept frames instead of decoding every frame before them: faster
on long videos (`benchmarks/bench_video_decode.py`). The two convert and scale frames differently, so their pixels,
and the embeddings, differ slightly: the backend is a setting, never chosen by what happens to be installed.
"""

import hashlib
import io
import math
import os
import re
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image


VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v")
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
PATCH_SIDE = 28  # a merged group of 2x2 14-pixel patches: the least a Qwen-VL vision tower takes, per side
PATCH_PIXELS = PATCH_SIDE * PATCH_SIDE
BACKENDS = ("pyav", "torchcodec")


@dataclass(frozen=True)
class VideoSampling:
    """How a video becomes frames.

    Args:
        num_frames: frames kept, spread uniformly over the video (VLM2Vec-V2 uses 8); a shorter video keeps all.
        fps: if set, keep one frame per `1 / fps` seconds of a video file instead, at most `num_frames` (more are
            spread uniformly again). Frame lists and folders have no frame rate and are sampled by count.
        max_frame_pixels: each kept frame is scaled down (aspect ratio kept) to at most this many pixels.
        max_video_pixels: the kept frames together hold at most this many pixels; frames shrink further to fit.
        min_frame_pixels: frames are never scaled below this; a budget that would need it is refused.
        backend: the video file decoder, `"pyav"` or `"torchcodec"` (see the module docstring).
    """

    num_frames: int = 8
    fps: float | None = None
    max_frame_pixels: int = 256 * PATCH_PIXELS
    max_video_pixels: int = 8 * 256 * PATCH_PIXELS
    min_frame_pixels: int = PATCH_PIXELS
    backend: str = "pyav"

    def __post_init__(self):
        for name in ("num_frames", "max_frame_pixels", "max_video_pixels", "min_frame_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"video sampling: {name} must be a positive int, got {value!r}")
        if self.fps is not None and (isinstance(self.fps, bool) or not isinstance(self.fps, (int, float))
                                     or not self.fps > 0):  # fmt: skip
            raise ValueError(f"video sampling: fps must be a positive number or None, got {self.fps!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"video sampling: backend={self.backend!r} is not one of {BACKENDS}")
        if self.max_frame_pixels < self.min_frame_pixels:
            raise ValueError(f"video sampling: max_frame_pixels={self.max_frame_pixels} is under min_frame_pixels="
                             f"{self.min_frame_pixels}")  # fmt: skip

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Video:
    """A sampled video: its kept frames (RGB, one size), their numbers in the source, the source's frame rate and the
    pixels each frame may have (`frame_budget`; the video processor's rounding to whole patches must stay within)."""

    frames: list[Image.Image]
    indices: list[int]
    source_fps: float | None
    source_frames: int
    frame_pixels: int

    def digest(self) -> str:
        """sha256 of the kept frames' pixels, their source numbers and the frame rate: what identifies the video as
        the model sees it (part of a trace cache key)."""
        digest = hashlib.sha256(repr((self.source_frames, self.indices, self.source_fps)).encode("utf-8"))
        for frame in self.frames:
            digest.update(f"{frame.mode}{frame.size}".encode("utf-8"))
            digest.update(frame.tobytes())
        return digest.hexdigest()


def frame_indices(total: int, sampling: VideoSampling, source_fps: float | None = None) -> list[int]:
    """Which of `total` source frames to keep: `int(linspace(0, total - 1, num_frames))` (VLM2Vec's rule), all of
    them when there are fewer; with `sampling.fps` and a known source rate, one frame every `source_fps / fps`
    frames, spread uniformly again when that is more than `num_frames`."""
    if sampling.fps is not None and source_fps:
        step = max(source_fps / sampling.fps, 1.0)
        indices = sorted({int(i * step) for i in range(int(math.ceil(total / step)))} - {total})
        if len(indices) <= sampling.num_frames:
            return indices
        return [indices[i] for i in np.linspace(0, len(indices) - 1, sampling.num_frames, dtype=int)]
    if total <= sampling.num_frames:
        return list(range(total))
    return np.linspace(0, total - 1, sampling.num_frames, dtype=int).tolist()


def frame_budget(count: int, sampling: VideoSampling) -> int:
    """The pixels each of `count` frames may have: the frame budget, or an even share of the video budget."""
    return min(sampling.max_frame_pixels, sampling.max_video_pixels // count)


def fitted_size(width: int, height: int, count: int, sampling: VideoSampling, where: str) -> tuple[int, int]:
    """The size `count` frames of `width` x `height` are scaled to (aspect ratio kept) to fit both budgets.

    Raises:
        ValueError: if the budgets leave a frame fewer than `min_frame_pixels`.
    """
    budget = frame_budget(count, sampling)
    if budget < sampling.min_frame_pixels:
        raise ValueError(f"{where}: {count} frames of at least {sampling.min_frame_pixels} pixels each need "
                         f"{count * sampling.min_frame_pixels} pixels, over max_video_pixels="
                         f"{sampling.max_video_pixels}; keep fewer frames (num_frames) or raise "
                         "max_video_pixels")  # fmt: skip
    if width * height <= budget:
        return width, height
    scale = math.sqrt(budget / (width * height))
    fitted = max(1, int(width * scale)), max(1, int(height * scale))
    if min(fitted) < PATCH_SIDE:
        raise ValueError(f"{where}: a {width}x{height} frame scaled to the budget of {budget} pixels would be "
                         f"{fitted[0]}x{fitted[1]}, under the {PATCH_SIDE} pixels a side needs; crop it")  # fmt: skip
    return fitted


def natural_key(name: str) -> list:
    """Sort key that puts `frame_2.png` before `frame_10.png`."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def frame_files(folder: str, where: str) -> list[str]:
    """The frame images of `folder`, in natural order.

    Raises:
        ValueError: if it holds no image file.
    """
    names = sorted((name for name in os.listdir(folder) if name.lower().endswith(FRAME_EXTENSIONS)), key=natural_key)
    if not names:
        raise ValueError(f"{where}: video folder {folder!r} holds no frame images ({', '.join(FRAME_EXTENSIONS)})")
    return [os.path.join(folder, name) for name in names]


def looks_like_video_file(value: str) -> bool:
    """Whether a bare string names a video file (or is a `data:video/` URI) rather than being text: as for images, a
    string with white space is text ("a clip named cat.mp4") unless it is the path of an existing file."""
    if value.startswith("data:video/"):
        return True
    if not value.lower().endswith(VIDEO_EXTENSIONS):
        return False
    return not any(char.isspace() for char in value) or os.path.isfile(value)


def load_video(value, where: str, sampling: VideoSampling, load_image, max_image_pixels: int) -> Video:
    """A `Video` from a list or tuple of frames (anything `load_image` takes), a folder of frame images, a video
    file's path, or its bytes.

    Args:
        where: names the input in errors, e.g. `"inputs[3]['video']"`.
        load_image: `(value, where) -> RGB PIL image`, the processor's image loader (its size guard and URL policy).
        max_image_pixels: a video file whose frames have more pixels than this is refused before decoding.

    Raises:
        ValueError: a missing file, an empty or image-less folder, a corrupt or zero-frame video, frames of different
            sizes, or budgets that the frames cannot be scaled into.
        TypeError: any other type.
    """
    if isinstance(value, (list, tuple)):
        return _video_of_frames(list(value), where, sampling, load_image)
    decode = _decode_with_torchcodec if sampling.backend == "torchcodec" else _decode
    if isinstance(value, (bytes, bytearray)):
        return decode(bytes(value), "the video bytes", where, sampling, max_image_pixels)
    if not isinstance(value, str):
        raise TypeError(f"{where}: a video must be a list of frames, a folder, a video file's path or its bytes, got "
                        f"{type(value).__name__}")  # fmt: skip
    if os.path.isdir(value):
        return _video_of_frames(frame_files(value, where), where, sampling, load_image)
    if not os.path.exists(value):
        raise ValueError(f"{where}: video {value!r} does not exist (a video file or a folder of frames)")
    return decode(value, repr(value), where, sampling, max_image_pixels)


def _video_of_frames(frames: list, where: str, sampling: VideoSampling, load_image) -> Video:
    if not frames:
        raise ValueError(f"{where}: the video has no frames")
    indices = frame_indices(len(frames), sampling)
    kept = [load_image(frames[i], f"{where}[{i}]") for i in indices]
    first = kept[0].size
    for i, frame in zip(indices, kept):
        if frame.size != first:
            raise ValueError(f"{where}[{i}]: frame is {frame.size[0]}x{frame.size[1]} but frame {indices[0]} is "
                             f"{first[0]}x{first[1]}; a video's frames must share one size")  # fmt: skip
    size = fitted_size(*first, len(kept), sampling, where)
    if size != first:
        kept = [frame.resize(size, Image.Resampling.BICUBIC) for frame in kept]
    return Video(kept, indices, None, len(frames), frame_budget(len(kept), sampling))


def _decode(source, name: str, where: str, sampling: VideoSampling, max_image_pixels: int) -> Video:
    """Decode the kept frames of a video file (a path or its bytes) with PyAV, one frame at a time."""
    try:
        import av
    except ImportError as error:
        raise ImportError(f"{where}: decoding a video file needs PyAV (pip install av)") from error
    try:
        container = av.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (av.FFmpegError, OSError, ValueError) as error:
        raise ValueError(f"{where}: {name} is not a readable video ({error})") from error
    with container:
        if not container.streams.video:
            raise ValueError(f"{where}: {name} has no video stream")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        _check_frame_pixels(width, height, name, where, max_image_pixels)
        source_fps = float(stream.average_rate) if stream.average_rate else None
        total = stream.frames or _count_frames(container, stream, name, where)
        wanted, size = _plan(width, height, total, source_fps, name, where, sampling)
        stream.thread_type = "AUTO"
        kept = []
        try:
            for number, frame in enumerate(container.decode(stream)):
                if number == wanted[len(kept)]:  # scaled while converted: a full-size RGB copy is never made
                    kept.append(frame.to_image(width=size[0], height=size[1]))
                    if len(kept) == len(wanted):
                        break
        except av.FFmpegError as error:
            raise ValueError(f"{where}: {name} is corrupt: decoding failed after {len(kept)} kept frames "
                             f"({error})") from error  # fmt: skip
    if not kept:
        raise ValueError(f"{where}: {name} has no decodable frames")
    if len(kept) < len(wanted):
        raise ValueError(f"{where}: {name} decoded to fewer frames than the {total} it announces (frame "
                         f"{wanted[len(kept)]} is missing): a truncated or corrupt file")  # fmt: skip
    return Video(kept, wanted, source_fps, total, frame_budget(len(wanted), sampling))


def _decode_with_torchcodec(source, name: str, where: str, sampling: VideoSampling, max_image_pixels: int) -> Video:
    """Decode the kept frames of a video file (a path or its bytes) with torchcodec, seeking to each."""
    try:
        from torchcodec.decoders import VideoDecoder
    except (ImportError, OSError, RuntimeError) as error:  # torchcodec loads FFmpeg's libraries when imported
        raise ImportError(f"{where}: backend='torchcodec' needs torchcodec and FFmpeg's libraries ({error})") from error
    try:
        decoder = VideoDecoder(source)
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"{where}: {name} is not a readable video ({error})") from error
    metadata = decoder.metadata
    width, height = metadata.width, metadata.height
    _check_frame_pixels(width, height, name, where, max_image_pixels)
    wanted, size = _plan(width, height, metadata.num_frames or 0, metadata.average_fps, name, where, sampling)
    try:
        frames = decoder.get_frames_at(wanted).data  # (frames, channels, height, width), uint8 RGB
    except RuntimeError as error:
        raise ValueError(f"{where}: {name} is corrupt: decoding its frames {wanted} failed ({error})") from error
    kept = [Image.fromarray(frame.permute(1, 2, 0).numpy()) for frame in frames]
    if size != (width, height):
        kept = [frame.resize(size, Image.Resampling.BICUBIC) for frame in kept]
    return Video(kept, wanted, metadata.average_fps, metadata.num_frames, frame_budget(len(wanted), sampling))


def _check_frame_pixels(width: int, height: int, name: str, where: str, max_image_pixels: int) -> None:
    """A video file's frames must pass the image guard before anything is decoded."""
    if width * height > max_image_pixels:
        raise ValueError(f"{where}: {name} has {width}x{height} frames, over max_image_pixels={max_image_pixels}")


def _plan(width: int, height: int, total: int, source_fps: float | None, name: str, where: str,
          sampling: VideoSampling) -> tuple[list[int], tuple[int, int]]:  # fmt: skip
    """Which of a file's `total` frames to decode, and the size they are scaled to (either decoder)."""
    if total == 0:
        raise ValueError(f"{where}: {name} has no frames")
    wanted = frame_indices(total, sampling, source_fps)
    return wanted, fitted_size(width, height, len(wanted), sampling, where)


def _count_frames(container, stream, name: str, where: str) -> int:
    """Frames of a stream whose header does not say (WebM): its packets, read without decoding, then rewound."""
    try:
        count = sum(1 for packet in container.demux(stream) if packet.size)
        container.seek(0)
    except Exception as error:  # PyAV raises its FFmpegError family and plain errors on broken containers
        raise ValueError(f"{where}: {name} is corrupt: its packets cannot be read ({error})") from error
    return count


__all__ = ["Video", "VideoSampling", "load_video", "frame_indices", "fitted_size", "natural_key", "VIDEO_EXTENSIONS"]
