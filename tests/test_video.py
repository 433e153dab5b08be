"""Video loading (video_tte.py): frame lists, frame folders and video files (PyAV) sampled to a few frames within
pixel budgets, and a clear error for every kind of bad video."""

import functools
import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO_ROOT
from tte.processing_tte import DEFAULT_MAX_IMAGE_PIXELS, load_image
from tte.video_tte import PATCH_PIXELS, VideoSampling, fitted_size, frame_indices, load_video


av = pytest.importorskip("av")
LOAD = functools.partial(load_image, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS)


def frame_of(number: int, size=(64, 48)) -> Image.Image:
    """A frame whose grey level encodes its number (8 levels apart, so lossy codecs keep them apart)."""
    return Image.new("RGB", size, (number * 8 % 256,) * 3)


def grey_level(frame: Image.Image) -> int:
    return int(round(np.asarray(frame, dtype=np.float64).mean() / 8))


def write_video(path: str, count: int, fps: int = 10, size=(64, 48), codec: str = "libx264") -> str:
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for number in range(count):
            frame = av.VideoFrame.from_ndarray(np.asarray(frame_of(number, size)), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def load(value, sampling=VideoSampling()):
    return load_video(value, "inputs[0]['video']", sampling, LOAD, DEFAULT_MAX_IMAGE_PIXELS)


def test_frame_indices_spread_uniformly_or_by_frames_per_second():
    assert frame_indices(12, VideoSampling(num_frames=8)) == [0, 1, 3, 4, 6, 7, 9, 11]  # int(linspace(0, 11, 8))
    assert frame_indices(3, VideoSampling(num_frames=8)) == [0, 1, 2]  # a shorter video keeps every frame
    assert frame_indices(30, VideoSampling(fps=2), source_fps=10) == [0, 5, 10, 15, 20, 25]
    # 2 frames per second of a 10 s video is 20 frames: spread to 8 again
    assert frame_indices(100, VideoSampling(num_frames=8, fps=2), source_fps=10) == [0, 10, 25, 40, 50, 65, 80, 95]
    assert frame_indices(30, VideoSampling(num_frames=4, fps=2)) == [0, 9, 19, 29]  # no frame rate: by count


def test_a_frame_list_keeps_the_sampled_frames_in_order():
    frames = [frame_of(number) for number in range(12)]
    video = load(frames)
    assert video.indices == [0, 1, 3, 4, 6, 7, 9, 11] and video.source_frames == 12 and video.source_fps is None
    assert [grey_level(frame) for frame in video.frames] == video.indices


def test_a_frame_list_loads_only_the_frames_it_keeps(tmp_path):
    paths = [str(tmp_path / f"{number}.png") for number in range(12)]
    for number, path in enumerate(paths):
        if number in (0, 1, 3, 4, 6, 7, 9, 11):
            frame_of(number).save(path)  # the others do not exist: loading them would fail
    assert [grey_level(frame) for frame in load(paths).frames] == [0, 1, 3, 4, 6, 7, 9, 11]


def test_frames_given_as_bytes_and_paths_mix(tmp_path):
    frame_of(1).save(tmp_path / "1.png")
    buffer = io.BytesIO()
    frame_of(2).save(buffer, format="PNG")
    video = load([str(tmp_path / "1.png"), buffer.getvalue()])
    assert [grey_level(frame) for frame in video.frames] == [1, 2]


def test_a_folder_of_frames_is_read_in_natural_order(tmp_path):
    for number in range(1, 13):  # frame_10.png sorts before frame_2.png as text
        frame_of(number).save(tmp_path / f"frame_{number}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    video = load(str(tmp_path))
    assert [grey_level(frame) for frame in video.frames] == [1, 2, 4, 5, 7, 8, 10, 12]


def backend_available(backend: str) -> bool:
    if backend == "pyav":
        return True
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401  (loads FFmpeg's libraries)
    except (ImportError, OSError, RuntimeError):
        return False
    return True


BACKENDS = [pytest.param(backend, marks=pytest.mark.skipif(not backend_available(backend),
                                                           reason=f"{backend} or FFmpeg's libraries not installed"))
            for backend in ("pyav", "torchcodec")]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, codec", [("clip.mp4", "libx264"), ("clip.webm", "libvpx"), ("clip.avi", "mpeg4")])
def test_a_video_file_is_decoded_to_its_sampled_frames(tmp_path, name, codec, backend):
    path = write_video(str(tmp_path / name), count=30, codec=codec)
    video = load(path, VideoSampling(backend=backend))
    assert video.source_frames == 30 and video.source_fps == 10  # WebM's header has no count: its packets are counted
    assert video.indices == frame_indices(30, VideoSampling())
    assert [grey_level(frame) for frame in video.frames] == video.indices
    by_rate = load(path, VideoSampling(fps=2, backend=backend))
    assert by_rate.indices == [0, 5, 10, 15, 20, 25]
    assert [grey_level(frame) for frame in by_rate.frames] == by_rate.indices
    small = load(path, VideoSampling(max_frame_pixels=2 * PATCH_PIXELS, backend=backend))
    assert small.frames[0].size[0] * small.frames[0].size[1] <= 2 * PATCH_PIXELS


@pytest.mark.parametrize("backend", BACKENDS)
def test_video_bytes_decode_like_the_file(tmp_path, backend):
    path = write_video(str(tmp_path / "clip.mp4"), count=20)
    sampling = VideoSampling(backend=backend)
    from_bytes, from_file = load(open(path, "rb").read(), sampling), load(path, sampling)
    assert from_bytes.indices == from_file.indices and from_bytes.digest() == from_file.digest()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_corrupt_file_is_refused_by_either_backend(tmp_path, backend):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"this is not a video, only text with a video's name\n" * 80)
    with pytest.raises(ValueError, match=r"inputs\[0\]\['video'\]: '.*corrupt.mp4' is not a readable video"):
        load(str(corrupt), VideoSampling(backend=backend))


def test_frames_are_scaled_into_the_frame_and_video_budgets():
    frames = [frame_of(number, size=(1920, 1080)) for number in range(16)]
    video = load(frames, VideoSampling(num_frames=8, max_frame_pixels=64 * PATCH_PIXELS))
    width, height = video.frames[0].size
    assert width * height <= 64 * PATCH_PIXELS and abs(width / height - 1920 / 1080) < 0.02
    # the whole video's budget binds before the frame's: 8 frames share 16 patch groups' worth
    video = load(frames, VideoSampling(num_frames=8, max_video_pixels=16 * PATCH_PIXELS))
    assert sum(frame.size[0] * frame.size[1] for frame in video.frames) <= 16 * PATCH_PIXELS
    assert {frame.size for frame in video.frames} == {video.frames[0].size}


def test_budgets_that_cannot_be_met_are_refused_by_name():
    frames = [frame_of(number) for number in range(8)]
    with pytest.raises(ValueError, match=r"inputs\[0\]\['video'\]: 8 frames .* over max_video_pixels=1000; keep fewer"):
        load(frames, VideoSampling(max_video_pixels=1000))
    with pytest.raises(ValueError, match="would be 2236x26, under the 28 pixels a side needs; crop it"):
        fitted_size(20000, 240, 1, VideoSampling(max_frame_pixels=60000), "inputs[0]['video']")
    with pytest.raises(ValueError, match="num_frames must be a positive int"):
        VideoSampling(num_frames=0)
    with pytest.raises(ValueError, match="fps must be a positive number"):
        VideoSampling(fps=-1)
    with pytest.raises(ValueError, match=r"backend='opencv' is not one of \('pyav', 'torchcodec'\)"):
        VideoSampling(backend="opencv")


def test_the_digest_identifies_the_video_as_sampled(tmp_path):
    path = write_video(str(tmp_path / "clip.mp4"), count=30)
    assert load(path).digest() == load(path).digest()
    assert load(path).digest() != load(path, VideoSampling(num_frames=4)).digest()
    assert load(path).digest() != load(path, VideoSampling(max_frame_pixels=2 * PATCH_PIXELS)).digest()


def test_bad_videos_are_refused_with_the_item_and_the_reason(tmp_path):
    where = r"inputs\[0\]\['video'\]"
    with pytest.raises(ValueError, match=f"{where}: video '.*missing.mp4' does not exist"):
        load(str(tmp_path / "missing.mp4"))
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"this is not a video, only text with a video's name\n" * 80)  # fixed: random bytes can parse
    with pytest.raises(ValueError, match=f"{where}: '.*corrupt.mp4' is not a readable video"):
        load(str(corrupt))
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(open(write_video(str(tmp_path / "whole.mp4"), count=30), "rb").read()[:600])
    with pytest.raises(ValueError, match=f"{where}: '.*truncated.mp4' (is not a readable video|is corrupt|has no)"):
        load(str(truncated))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no frames here")
    with pytest.raises(ValueError, match=f"{where}: video folder '.*empty' holds no frame images"):
        load(str(empty))
    with pytest.raises(ValueError, match=f"{where}: the video has no frames"):
        load([])
    with pytest.raises(ValueError, match=r"inputs\[0\]\['video'\]\[1\]: frame is 32x32 but frame 0 is 64x48"):
        load([frame_of(0), frame_of(1, size=(32, 32))])
    with pytest.raises(ValueError, match=r"inputs\[0\]\['video'\]\[1\]: image file '.*nothing.png' does not exist"):
        load([frame_of(0), str(tmp_path / "nothing.png")])
    with pytest.raises(TypeError, match=f"{where}: a video must be a list of frames, .* got int"):
        load(3)


def test_a_zero_frame_video_is_refused(tmp_path):
    path = str(tmp_path / "zero.mp4")
    container = av.open(path, "w")
    stream = container.add_stream("libx264", rate=10)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    container.start_encoding()
    container.close()
    with pytest.raises(ValueError, match=r"inputs\[0\]\['video'\]: '.*zero.mp4' has no video stream"):
        load(path)


MEMORY_PROBE = """
import sys
from PIL import Image
from tte.video_tte import VideoSampling, load_video
def peak_kb():  # this process's own peak RSS (ru_maxrss would count the parent's, inherited through fork)
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
before = peak_kb()  # only PIL, NumPy and the loader are imported
video = load_video(sys.argv[1], "inputs[0]['video']", VideoSampling(), lambda value, where: Image.open(value),
                   8192 * 8192)
print(len(video.frames), video.frames[0].size[0], video.frames[0].size[1], video.source_frames,
      (peak_kb() - before) // 1024)
"""
# The 600 frames decoded to RGB would take 3.7 GB, and 8 kept at full size 50 MB; decoding holds a few reference
# frames (3 MB each in YUV) and the 8 kept, scaled-down frames.
MEMORY_BOUND_MB = 100


def test_a_two_minute_1080p_video_is_sampled_within_the_budget_and_a_bounded_memory(tmp_path):
    path = str(tmp_path / "long.mp4")
    with av.open(path, "w") as container:  # 2 minutes at 5 frames per second, 1920x1080, in a few seconds of CPU
        stream = container.add_stream("libx264", rate=5, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        pixels = np.zeros((1080, 1920, 3), dtype=np.uint8)
        for number in range(600):
            pixels[:, :, 0] = number % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, path], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    kept, width, height, total, grown_mb = map(int, result.stdout.split())
    sampling = VideoSampling()
    assert kept == sampling.num_frames and total == 600
    assert width * height <= sampling.max_frame_pixels and kept * width * height <= sampling.max_video_pixels
    assert grown_mb < MEMORY_BOUND_MB, f"peak RSS grew {grown_mb} MB while loading"
