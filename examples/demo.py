"""Build the default model, TTE-mini, from its committed parts and show it thinking, embedding and ranking.

Usage: python examples/demo.py [MODEL_DIR]      (default: models/tte-mini)

TTE-mini is a toy model for coloured shapes (see README): a trained vision tower on the frozen SmolLM2-135M-Instruct.
The demo asks it about a few easy-VQA test images (held out from training) and two rendered scenes (colour, shape,
and a description), prints the trace it writes, and ranks candidate answers and captions by cosine similarity. Its embedding head is not trained yet,
so the rankings show the mechanism more than quality; the traces are real model output.
"""

import os
import random
import sys


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tte_cli  # noqa: E402
from training.assets import build_model  # noqa: E402
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


def main(model_dir: str) -> None:
    build_model(os.path.join(REPO, "assets", "tte-mini"), model_dir)
    print("\nTTE-mini: the traces (query_reasoning) are the model's real answers. Its embedding head is not trained "
          "yet,\nso the rankings below show the mechanism, not quality (part 2 of TTE-mini trains it).")
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
