"""The plot of score against reasoning tokens (training.compare_variants) and the committed pictures and Space
examples that `python -m scripts.pictures` regenerates."""

import json
import os

import numpy as np

from scripts.pictures import ASSETS, COMPARISON, IMAGES, SPACE_EXAMPLES
from training.assets import PLOT, read_manifest
from training.compare_variants import draw_plot, plot_points, write_plot
from training.export import FIGURE


def committed_comparison() -> dict:
    with open(COMPARISON) as handle:
        return json.load(handle)


def test_the_plot_draws_each_variant_and_policy_from_the_results():
    comparison = committed_comparison()
    figure = draw_plot(plot_points(comparison), "title")
    drawn = [tuple(collection.get_offsets()[0]) for collection in figure.axes[0].collections]
    expected, expected_labels = [], []
    for name, variant in comparison["variants"].items():
        label = "teacher (oracle)" if name == "teacher" else name
        expected.append((variant["think_tokens_per_query"], variant["scores"]["overall"]))
        expected_labels.append(f"{label}, think={'never' if name == 'no-thinking' else 'queries'}")
        if name != "no-thinking":  # each variant that thinks, also without thinking: no reasoning tokens
            expected.append((0.0, variant["without_thinking"]["scores"]["overall"]))
            expected_labels.append(f"{label}, think=never")
    assert np.allclose(drawn, expected)
    assert figure.axes[0].get_legend_handles_labels()[1] == expected_labels
    # a variant keeps its colour; its think=never point is hollow
    faces = [collection.get_facecolors() for collection in figure.axes[0].collections]
    edges = [tuple(collection.get_edgecolors()[0]) for collection in figure.axes[0].collections]
    assert edges[1] == edges[2] and len(faces[2]) == 0 and len(faces[1]) == 1


def test_committed_plots_are_the_ones_the_committed_results_make(tmp_path):
    regenerated = write_plot(committed_comparison(), str(tmp_path))
    with open(os.path.splitext(regenerated)[0] + ".json") as handle:
        points = json.load(handle)["points"]
    with open(os.path.join(IMAGES, "accuracy-vs-tokens.json")) as handle:
        assert json.load(handle)["points"] == points == plot_points(committed_comparison())
    # the README's picture and the model card's (in the assets, listed in their manifest) are one drawing
    assert open(os.path.join(IMAGES, FIGURE), "rb").read() == open(os.path.join(ASSETS, PLOT), "rb").read()
    assert PLOT in read_manifest(ASSETS)["files"]


def test_space_examples_come_from_the_held_out_scenes_and_the_comparison():
    with open(os.path.join(SPACE_EXAMPLES, "examples.json")) as handle:
        examples = json.load(handle)
    relational = committed_comparison()["relational_example"]
    assert examples[0]["question"] == relational["question"] and examples[0]["candidates"] == relational["candidates"]
    assert all(example["answer"] in example["candidates"] for example in examples)
    assert all(os.path.isfile(os.path.join(SPACE_EXAMPLES, example["image"])) for example in examples)
