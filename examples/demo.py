"""Build a tiny random-weight TTE model folder and use it through the `tte` CLI.

Usage: python examples/demo.py OUTPUT_DIR

The model is NOT trained: its weights are random, so the traces are word salad and the scores mean nothing. It shows
the whole path (save -> load with trust_remote_code -> think -> embed -> rank) on this machine, with no Hub access.
"""

import os
import sys


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tte_cli  # noqa: E402
from tests.tiny_models import build_tte  # noqa: E402


def main(output_dir: str) -> None:
    build_tte("qwen2_vl", "unified", max_new_tokens=12).save_pretrained(output_dir)
    print(f"saved a tiny random-weight unified TTE model to {output_dir} (untrained: outputs are meaningless)\n")
    from easy_vqa import get_test_image_paths

    image = next(iter(get_test_image_paths().values()))
    print("$ tte embed", output_dir, '"a red square"', "--image", image, "--show-reasoning")
    tte_cli.main(["embed", output_dir, "a red square", "--image", image, "--show-reasoning"])
    print("\n$ tte rank", output_dir, 'circle square triangle --query "what shape is in the image?" --query-image', image)
    tte_cli.main(["rank", output_dir, "circle", "square", "triangle", "--query", "what shape is in the image?",
                  "--query-image", image, "--show-reasoning"])  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1])
