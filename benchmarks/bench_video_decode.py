"""Video file decoding with PyAV against torchcodec, side by side in one run: `video_tte.load_video` on one generated
clip with each backend, the kept frames and their budget the same.

The clip is made here with PyAV (libx264, a keyframe every 250 frames as its default), so nothing is downloaded. Every
repeat times each backend once, alternating, and each keeps its best time, so machine noise hits both alike.

    python benchmarks/bench_video_decode.py [--seconds 120 --fps 30 --width 1920 --height 1080 --repeats 3]
"""

import argparse
import json
import os
import tempfile
import time

import numpy as np


def write_clip(path: str, seconds: int, fps: int, width: int, height: int) -> str:
    import av

    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        pixels = np.zeros((height, width, 3), dtype=np.uint8)
        for number in range(seconds * fps):
            pixels[:, :, 0] = number % 256  # each frame differs, so the encoder cannot skip it
            pixels[:, : width // 4, 1] = (number * 7) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def main(argv=None) -> dict:
    from PIL import Image

    from tte.video_tte import VideoSampling, load_video

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--num_frames", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        clip = write_clip(os.path.join(folder, "clip.mp4"), args.seconds, args.fps, args.width, args.height)
        encoded = time.perf_counter() - started
        best = {}
        for _ in range(args.repeats):
            for backend in ("pyav", "torchcodec"):
                sampling = VideoSampling(num_frames=args.num_frames, backend=backend)
                started = time.perf_counter()
                video = load_video(clip, "clip", sampling, lambda value, where: Image.open(value), 8192 * 8192)
                best[backend] = min(best.get(backend, float("inf")), time.perf_counter() - started)
        result = {"clip": f"{args.seconds} s, {args.fps} fps, {args.width}x{args.height}, libx264 ultrafast",
                  "frames": args.seconds * args.fps, "kept": len(video.frames), "encode_seconds": round(encoded, 1),
                  "seconds": {name: round(value, 3) for name, value in best.items()},
                  "pyav / torchcodec": round(best["pyav"] / best["torchcodec"], 2)}  # fmt: skip
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
