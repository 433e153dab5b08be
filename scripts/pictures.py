"""Regenerate the pictures of the docs and the Space's examples, all from files, in one command:

    python -m scripts.pictures                 # needs models/tte-mini (built from assets/tte-mini when missing)
    python -m scripts.pictures --no_screenshot # only the plot and the examples (no browser)

- docs/images/accuracy-vs-tokens.png (+ .json, the plotted data): overall hit@1 against reasoning tokens per query,
  one point per TTE variant and its think policy, drawn by `training.compare_variants.write_plot` from
  assets/tte-mini/results/comparison.json; its copy in the assets (results/, in the manifest) goes on the model card;
- space/examples/: the Space's preset searches (examples.json and their images): the relational test question that
  `training.compare_variants` picked, one held-out scene question of each other kind, and easy-VQA test images;
- docs/images/space-search.png: the Space running TTE-mini in headless Chromium, on the first example.
"""

import argparse
import json
import os
import shutil
import tempfile


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.path.join(REPO, "assets", "tte-mini")
COMPARISON = os.path.join(ASSETS, "results", "comparison.json")
IMAGES = os.path.join(REPO, "docs", "images")
SCREENSHOT = "space-search.png"
SPACE_EXAMPLES = os.path.join(REPO, "space", "examples")
EXAMPLE_SEED = 2026  # scenes drawn like the test split's (each holds a held-out colour-shape combination)
EXAMPLE_KINDS = ("count", "grounding", "colour", "i2t")


def write_plots(comparison_path: str = COMPARISON, images: str = IMAGES, assets_dir: str = ASSETS) -> str:
    """The plot for the README (`images`) and for the model card (the assets, listed in their manifest)."""
    from training.assets import PLOT, add_asset_files
    from training.compare_variants import write_plot

    with open(comparison_path) as handle:
        path = write_plot(json.load(handle), images)
    add_asset_files(assets_dir, {PLOT: path})
    return path


def scene_examples(folder: str) -> list[dict]:
    """One held-out scene query of each `EXAMPLE_KINDS` and two easy-VQA test questions, images copied to `folder`."""
    from training.easy_vqa_data import write_easy_vqa_control
    from training.scene_tasks import KINDS, write_test_tasks

    examples = []
    with tempfile.TemporaryDirectory() as work:
        write_test_tasks(work, rows_per_task=1, seed=EXAMPLE_SEED)
        write_easy_vqa_control(os.path.join(work, "easy-vqa-control"), max_images=1)
        tasks = [(f"scene-{kind}", KINDS[kind][0]) for kind in EXAMPLE_KINDS] + [("easy-vqa-control", "vqa")]
        for name, task in tasks:
            with open(os.path.join(work, name, "test.jsonl")) as handle:
                rows = [json.loads(line) for line in handle][:2]
            for number, row in enumerate(rows):
                image = f"{name}-{number}.png"
                shutil.copyfile(os.path.join(work, name, row["qry_img_path"]), os.path.join(folder, image))
                examples.append({"question": row["qry_text"], "image": image, "instruction": row["qry_inst"], "task": task,
                                 "candidates": row["tgt_text"], "answer": row["tgt_text"][0]})  # fmt: skip
    return examples


def write_space_examples(comparison_path: str, folder: str) -> list[dict]:
    """The Space's examples: the comparison's relational example first, then `scene_examples`."""
    from training.compare_variants import save_example_image

    with open(comparison_path) as handle:
        relational = json.load(handle)["relational_example"]
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    examples = []
    if relational is not None:
        save_example_image(relational, os.path.join(folder, "relational.png"))
        examples.append({"question": relational["question"], "image": "relational.png",
                         "instruction": relational["instruction"], "task": "vqa",
                         "candidates": relational["candidates"], "answer": relational["answer"]})  # fmt: skip
    examples += scene_examples(folder)
    with open(os.path.join(folder, "examples.json"), "w") as handle:
        json.dump(examples, handle, indent=1)
    return examples


def write_screenshot(model_dir: str, example: dict, path: str) -> str:
    """The Space on `model_dir`, searched with `example` in headless Chromium, once its charts are drawn."""
    from scripts.space_browser import chromium, python_app_command, running_space, search, shown_ranking
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with tempfile.TemporaryDirectory() as work:
        log = os.path.join(work, "space.log")
        model = os.path.relpath(model_dir, REPO)  # the page shows it: no machine-specific path
        with running_space(python_app_command(os.path.join(REPO, "space")), model, REPO, log) as url:
            with chromium(height=2400) as driver:
                search(driver, url, os.path.join(SPACE_EXAMPLES, example["image"]), example["question"],
                       example["candidates"], example["instruction"])  # fmt: skip
                shown_ranking(driver)
                WebDriverWait(driver, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".vega-embed")) >= 2)
                driver.save_screenshot(path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", default=os.path.join(REPO, "models", "tte-mini"))
    parser.add_argument("--no_screenshot", action="store_true", help="Skip the browser screenshot.")
    args = parser.parse_args(argv)
    print("wrote", write_plots(), "and its copy in", ASSETS)
    examples = write_space_examples(COMPARISON, SPACE_EXAMPLES)
    print(f"wrote {len(examples)} examples to {SPACE_EXAMPLES}")
    if not args.no_screenshot:
        from training.assets import build_model

        build_model(ASSETS, args.model_dir)  # a no-op when up to date
        print("wrote", write_screenshot(args.model_dir, examples[0], os.path.join(IMAGES, SCREENSHOT)))


if __name__ == "__main__":
    main()
