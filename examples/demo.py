"""Build the default model, TTE-mini, from its committed parts and show it thinking, embedding and ranking.

Usage: python examples/demo.py [MODEL_DIR]      (default: models/tte-mini)

TTE-mini is a toy model for coloured shapes (see README). When its assets hold the variants' comparison, the demo
first asks the relational test question that `training.compare_variants` picked from the held-out split (the first
one the no-thinking embedder ranks wrong and TTE-mini right), then asks about a few easy-VQA test images (held out
from training) and two rendered scenes. It prints the trace the model writes and ranks candidate answers and
captions by cosine similarity; the traces are real model output.
"""

import json
import os
import random
import sys


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tte_cli  # noqa: E402
from training.assets import build_model  # noqa: E402
from training.compare_variants import save_example_image  # noqa: E402
from training.scenes import render, random_scene  # noqa: E402


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLOUR_QUESTION, SHAPE_QUESTION, DESCRIBE = "what color is the shape?", "what shape is in the image?", "describe the image."


def demo_images(folder: str) -> list[tuple[str, str]]:
    """(path, origin) of 3 easy-VQA test images and 2 rendered scenes saved to `folder`."""
    from easy_vqa import get_test_image_paths

    paths = get_test_image_paths()
    images = [(paths[image_id], f"easy-VQA test image {image_id}") for image_id in (0, 1, 3)]
    os.makedirs(folder, exist_ok=True)
    rng = random.Random(2026)
    for index in range(2):
        path = os.path.join(folder, f"scene-{index}.png")
        render(random_scene(rng)).save(path)
        images.append((path, "a rendered scene"))
    return images


def show(command: list[str]) -> None:
    print("\n$ tte " + " ".join(f'"{part}"' if " " in part else part for part in command))
    tte_cli.main(command)


def relational_demo(model_dir: str, assets_dir: str, folder: str) -> None:
    """The relational question the recipe picked: TTE-mini thinks and ranks live; the no-thinking embedder's answer
    is the one recorded in the comparison (that model is not shipped)."""
    with open(os.path.join(assets_dir, "results", "comparison.json")) as handle:
        example = json.load(handle)["relational_example"]
    if example is None:
        print("\nThe comparison found no relational test question that thinking fixed.")
        return
    os.makedirs(folder, exist_ok=True)
    path = save_example_image(example, os.path.join(folder, "relational.png"))
    print(f"\n=== A held-out relational question ({example['task']} row {example['row']}, picked by "
          "training.compare_variants)")
    # The instruction is part of the query's text, as in the evaluation (candidates carry none).
    show(["rank", model_dir, *example["candidates"], "--query", f"{example['instruction']}\n{example['question']}",
          "--query-image", path, "--task", "vqa", "--show-reasoning"])
    print(f"\nThe no-thinking embedder (same budget, trained by the recipe, not shipped) ranked "
          f"{example['no_thinking_top1']!r} first; the answer is {example['answer']!r}.")


def main(model_dir: str) -> None:
    assets_dir = os.path.join(REPO, "assets", "tte-mini")
    build_model(assets_dir, model_dir)
    if os.path.isfile(os.path.join(assets_dir, "results", "comparison.json")):
        print("\nTTE-mini thinks (query_reasoning is its trace), then embeds what it wrote with its trained head.")
        relational_demo(model_dir, assets_dir, os.path.join(REPO, "outputs", "demo-images"))
    else:
        print("\nTTE-mini: the traces (query_reasoning) are the model's real answers. Its embedding head is not "
              "trained yet,\nso the rankings below show the mechanism, not quality.")
    for path, origin in demo_images(os.path.join(REPO, "outputs", "demo-images")):
        print(f"\n=== {origin}")
        show(["rank", model_dir, "red", "green", "blue", "yellow", "teal", "brown", "gray", "black",
              "--query", COLOUR_QUESTION, "--query-image", path, "--task", "vqa", "--show-reasoning"])
        show(["rank", model_dir, "a circle", "a rectangle", "a triangle", "--query", SHAPE_QUESTION,
              "--query-image", path, "--task", "vqa", "--show-reasoning"])
        show(["rank", model_dir, "a red triangle", "a blue circle", "a yellow rectangle", "a gray triangle",
              "a black circle", "--query", DESCRIBE, "--query-image", path, "--show-reasoning"])


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "models", "tte-mini"))
