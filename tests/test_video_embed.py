"""Videos in `embed`, on tiny random Qwen2-VL, Qwen2.5-VL and Qwen3-VL models in every variant: frame lists, frame
folders and mp4 files, alone and in batches mixed with texts and images, the unified single pass, each family's
video tokens and positions, the video prompt family, per-call sampling and the trace cache key."""

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import make_image
from training.tiny_models import build_processor
from tests.test_video import frame_of, write_video
from tte.processing_tte import PROMPT_SETS
from tte.trace_cache_tte import trace_key
from tte.video_tte import VideoSampling


pytest.importorskip("av")
VIDEO_BACKBONES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
VARIANTS = ["unified", "student", "teacher"]
FRAMES = [frame_of(number) for number in range(6)]


def given_traces(variant: str, count: int) -> dict:
    """A teacher has no reasoner of its own: its traces are given."""
    return {"reasoning": [f"trace {i}" for i in range(count)]} if variant == "teacher" else {}


@pytest.fixture(scope="module")
def frame_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    for number, frame in enumerate(FRAMES):
        frame.save(folder / f"frame_{number + 1}.png")
    return str(folder)


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    return write_video(str(tmp_path_factory.mktemp("clip") / "clip.mp4"), count=20)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", VIDEO_BACKBONES)
def test_a_video_embeds_alike_alone_and_in_a_mixed_batch(tiny_tte, name, variant, frame_folder, mp4):
    model = tiny_tte(name, variant)
    videos = [{"video": FRAMES, "text": "what moves?"}, {"video": frame_folder, "text": "what moves?"},
              {"video": mp4, "instruction": "Find the caption."}]  # fmt: skip
    others = ["a red circle", {"image": make_image(1), "text": "a picture"}]
    with torch.no_grad():
        alone = [model.embed([video], think="always", **given_traces(variant, 1)) for video in videos]
        mixed = model.embed([others[0], *videos, others[1]], think="always", **given_traces(variant, 5))
    assert alone[0].shape == (1, model.config.embedding_dim)
    assert np.allclose(alone[0], alone[1], atol=1e-6)  # the same frames, from a list or from PNG files
    for i, vector in enumerate(alone):
        assert np.abs(mixed[i + 1] - vector[0]).max() <= 1e-4
    assert not np.allclose(alone[0], alone[2], atol=1e-3)


@pytest.mark.parametrize("name", VIDEO_BACKBONES)
def test_the_unified_single_pass_on_a_video_equals_the_recomputation(tiny_tte, name, mp4):
    model = tiny_tte(name, "unified")
    inputs = [{"video": mp4, "text": "what moves?"}, "a red circle", {"video": FRAMES}]
    with torch.no_grad():
        single, ids = model.embed(inputs, think="always", return_reasoning="ids")
        recomputed = model.embed(inputs, think="always", reasoning=ids)
    assert np.abs(single - recomputed).max() <= 1e-4


def test_each_family_lays_out_its_video_tokens_and_positions(tiny_tte, mp4):
    prompts = {}
    for name in VIDEO_BACKBONES:
        processor = tiny_tte(name, "unified").processor
        item = processor.parse_inputs([{"video": mp4, "text": "what moves?"}])
        features = processor.build_reasoning_inputs(item)
        text = processor.tokenizer.decode(features["input_ids"][0])
        prompts[name] = text
        grid = features["video_grid_thw"][0].tolist()
        merged = grid[1] * grid[2] // processor.video_processor.merge_size**2
        assert text.count("<|video_pad|>") == grid[0] * merged
        assert (features["mm_token_type_ids"][0] == 2).sum() == grid[0] * merged  # video tokens are typed as video
    # 8 of 20 frames at 10 fps: 4 frames per second sampled, 2 frames per temporal patch -> 0.5 s each
    features = tiny_tte("qwen2_5_vl", "unified").processor.build_reasoning_inputs(
        tiny_tte("qwen2_5_vl", "unified").processor.parse_inputs([{"video": mp4}]))  # fmt: skip
    assert torch.allclose(features["second_per_grid_ts"], torch.tensor([0.5]))
    assert "seconds>" not in prompts["qwen2_vl"] and "seconds>" not in prompts["qwen2_5_vl"]
    # Qwen3-VL: each temporal patch after its timestamp, the mean time of its first and last frame: the kept frames
    # are 0, 2, 5, 8, 10, 13, 16, 19 at 10 fps, so (0 + 0.2) / 2, (0.5 + 0.8) / 2, ... (a byte-level tokenizer
    # decodes the timestamps as written)
    processor = build_processor("qwen3_vl", bpe=True)
    features = processor.build_reasoning_inputs(processor.parse_inputs([{"video": mp4}]))
    text = processor.tokenizer.decode(features["input_ids"][0])
    assert [f"<{seconds} seconds>" in text for seconds in ("0.1", "0.7", "1.1", "1.8")] == [True] * 4
    # the template's own vision markers around the video, and one pair per temporal patch (as Qwen3-VL's processor)
    assert text.count("<|vision_start|>") == text.count("<|vision_end|>") == 1 + 4


def test_the_video_processor_keeps_each_frame_within_its_pixel_budget(tmp_path):
    processor = build_processor("qwen2_vl")  # max_pixels 3136: a frame gets at most 3136 pixels
    wide = write_video(str(tmp_path / "wide.mp4"), count=8, size=(96, 54))  # 16:9, scaled to 74x41 by the loader
    for sampling in ({}, {"max_frame_pixels": 2 * 784}):
        (item,) = processor.parse_inputs([{"video": wide}], video_sampling=sampling)
        grid = processor.build_reasoning_inputs([item])["video_grid_thw"][0].tolist()
        patch = processor.video_processor.patch_size
        assert grid[1] * grid[2] * patch * patch <= processor.sampling_for_call(sampling).max_frame_pixels


def test_a_video_reasons_with_the_video_family_where_the_prompt_set_has_one():
    processor = build_processor("qwen2_vl")
    assert processor.prompt_set_version == "ecr-v1"
    (item,) = processor.parse_inputs([{"video": FRAMES}])
    assert item.task == "retrieval"  # ecr-v1 has no video family: the default one
    with pytest.raises(ValueError, match=r"inputs\[0\]: task='video' is not one of .* \(prompt set ecr-v1\)"):
        processor.parse_inputs([{"video": FRAMES, "task": "video"}])
    processor.prompt_set_version = "ecr-v2"
    video, image = processor.parse_inputs([{"video": FRAMES}, {"image": FRAMES[0]}])
    assert video.task == "video" and image.task == "retrieval"
    assert PROMPT_SETS["ecr-v2"]["video"] in processor.build_prompt(video)
    assert {**PROMPT_SETS["ecr-v2"], "video": None} == {**PROMPT_SETS["ecr-v1"], "video": None}  # ecr-v1 unchanged
    (explicit,) = processor.parse_inputs([{"video": FRAMES, "task": "vqa"}])
    assert explicit.task == "vqa"


def test_video_sampling_is_saved_and_overridable_per_call(tiny_tte, tmp_path, mp4):
    model = tiny_tte("qwen2_vl", "unified")
    processor = model.processor
    (default,) = processor.parse_inputs([{"video": mp4}])
    (fewer,) = processor.parse_inputs([{"video": mp4}], video_sampling={"num_frames": 4})
    assert len(default.video.frames) == 8 and len(fewer.video.frames) == 4
    with torch.no_grad():
        vectors = [model.embed([{"video": mp4}], think="never", video_sampling=sampling)
                   for sampling in (None, {"num_frames": 4}, VideoSampling(num_frames=4))]  # fmt: skip
    assert not np.allclose(vectors[0], vectors[1], atol=1e-4) and np.array_equal(vectors[1], vectors[2])
    saved = build_processor("qwen2_5_vl")
    saved.num_frames = 2
    saved.save_pretrained(tmp_path)
    reloaded = type(saved).from_pretrained(tmp_path)
    assert reloaded.video_sampling.num_frames == 2 and reloaded.video_layout == "qwen2_5_vl"
    with pytest.raises(ValueError, match=r"video_sampling: unknown settings \['frames'\]"):
        processor.parse_inputs([{"video": mp4}], video_sampling={"frames": 4})


def test_the_trace_cache_key_holds_the_video_and_its_sampling(tiny_tte, mp4):
    processor = tiny_tte("qwen2_vl", "unified").processor
    (eight,), (four,) = (processor.parse_inputs([{"video": mp4}], video_sampling={"num_frames": n}) for n in (8, 4))
    (text,) = processor.parse_inputs(["what moves?"])
    context = {"reasoner": "r"}
    keys = {trace_key(item, context)[0] for item in (eight, four)}
    assert len(keys) == 2
    assert "video" not in trace_key(text, context)[1]  # inputs without a video keep the keys they had


def test_bad_video_inputs_are_refused_by_name(tiny_tte, tmp_path):
    model = tiny_tte("qwen2_vl", "unified")
    with pytest.raises(ValueError, match=r"inputs\[1\]: give an image or a video, not both"):
        model.embed(["a text", {"video": FRAMES, "image": FRAMES[0]}], think="never")
    with pytest.raises(ValueError, match=r"inputs\[0\]\['video'\]: video '.*gone.mp4' does not exist"):
        model.embed([{"video": str(tmp_path / "gone.mp4")}], think="never")
    with pytest.raises(ValueError, match=r"inputs\[0\]\['video'\]\[1\]: frame is 32x32 but frame 0 is 64x48"):
        model.embed([{"video": [FRAMES[0], Image.new("RGB", (32, 32))]}], think="never")
    with pytest.raises(ValueError, match=r"inputs\[0\]: this model is text-only and cannot embed videos"):
        tiny_tte("llama", "unified").embed([{"video": FRAMES}], think="never")


def test_a_video_file_path_is_a_video_input_and_a_sentence_naming_one_is_text(tiny_tte, mp4):
    model = tiny_tte("qwen2_vl", "student")
    with torch.no_grad():
        assert np.array_equal(model.embed(mp4, think="never"), model.embed({"video": mp4}, think="never"))
    text, path = model.processor.parse_inputs(["watch the clip named holiday.mp4", mp4])
    assert text.text == "watch the clip named holiday.mp4" and text.video is None and path.video is not None
