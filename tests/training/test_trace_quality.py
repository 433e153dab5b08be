"""training.trace_quality: reading the scene description of a trace back, cell by cell, against the oracle's."""

from training.scene_tasks import write_test_tasks
from training.trace_quality import image_queries, read_cells, reading_scores
from tte_eval.runner import read_query_traces


ORACLE = ("<think>The image shows red circle at top left, blue triangle at bottom right. The shape at the top left is "
          "the red circle.</think> The answer is red.")


def test_a_trace_reads_back_as_its_cells():
    assert read_cells(ORACLE) == {"top left": ("red", "circle"), "bottom right": ("blue", "triangle")}
    assert read_cells("<think>I see shapes.</think> The answer is red.") == {}
    # a part it cannot read (an unknown colour) is left out, the rest is kept
    assert read_cells("The image shows mauve circle at top left, gray rectangle at top right.") == {
        "top right": ("gray", "rectangle")}


def test_reading_scores_count_scenes_cells_colours_and_shapes():
    oracle = {"a": ORACLE, "b": ORACLE}
    traces = {
        "a": ORACLE,  # read exactly
        # top left: right shape, wrong colour; bottom right missed; top right invented
        "b": "The image shows green circle at top left, blue triangle at top right.",
    }
    scores = reading_scores(traces, oracle)
    assert scores["queries"] == 2 and scores["scene_exact"] == 50.0
    assert scores["cell_occupancy"] == 100 * (4 + 2) / 8
    assert scores["shapes_compared"] == 3  # a: two cells in both readings, b: top left
    assert scores["colour"] == 100 * 2 / 3 and scores["shape"] == 100.0


def test_the_sample_takes_image_queries_of_the_test_tasks_and_the_oracle_reads_each(tmp_path):
    write_test_tasks(str(tmp_path), rows_per_task=3, seed=2)
    oracle, _ = read_query_traces(str(tmp_path / "oracle-traces"))
    queries = image_queries(str(tmp_path), per_task=2)
    tasks = {key.split("/")[0] for key in queries}
    assert "scene-t2i" not in tasks and {"scene-relation", "scene-i2t", "scene-classification"} <= tasks
    assert all(item["image"] for item in queries.values())
    assert all(sum(key.startswith(f"{task}/") for key in queries) == 2 for task in tasks)
    assert reading_scores({key: oracle[key] for key in queries}, oracle)["scene_exact"] == 100.0
    assert all(read_cells(oracle[key]) for key in queries)
