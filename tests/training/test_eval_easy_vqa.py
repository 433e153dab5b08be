"""The easy-VQA evaluation: question selection, answer parsing and scoring (the model run is in the recipe test)."""

import pytest

from training.eval_easy_vqa import final_answer, score, easy_vqa_questions


def test_questions_cover_colour_shape_and_one_yes_no_per_image():
    questions = easy_vqa_questions(max_images=10, max_yes_no_per_image=1)
    assert len({q["image_id"] for q in questions}) == 10
    kinds = [q["kind"] for q in questions]
    assert kinds.count("yes_no") == 10 and kinds.count("colour") >= 10 and kinds.count("shape") >= 10
    assert all(q["label"] in ("yes", "no") for q in questions if q["kind"] == "yes_no")
    assert questions == easy_vqa_questions(max_images=10, max_yes_no_per_image=1)  # a fixed order


@pytest.mark.parametrize("trace, answer", [
    ("red", "red"), ("Red.", "red"), ("<think> a blue circle, asked: colour </think> blue", "blue"),
    ("<think> red </think> <think> x </think> Triangle!", "triangle"), ("", ""), ("<think> only </think>", ""),
    # the ECR form of the oracle teacher's traces: the answer follows "The answer is" in the final line
    ("<think>The image shows a red circle. The answer is blue.</think> The answer is red.", "red"),
    ("<think>The image shows a teal circle.</think> The shape is round. The answer is circle.", "circle"),
    ("<think>x</think> The answer is", ""),
])  # fmt: skip
def test_final_answer_is_the_stated_answer_or_the_first_word_after_the_last_think_end(trace, answer):
    assert final_answer(trace) == answer


def test_score_counts_exact_first_words_per_kind():
    questions = [{"kind": "colour", "label": "red"}, {"kind": "colour", "label": "blue"},
                 {"kind": "shape", "label": "circle"}, {"kind": "yes_no", "label": "no"}]  # fmt: skip
    result = score(questions, ["red", "red blue", "a circle", "no"])
    assert result["colour"] == {"accuracy": 0.5, "correct": 1, "total": 2}
    assert result["shape"] == {"accuracy": 0.0, "correct": 0, "total": 1}  # "a circle": the first word is "a"
    assert result["yes_no"]["accuracy"] == 1.0


def test_image_labels_agree_with_every_question_they_come_from():
    from easy_vqa import get_test_questions

    from training.eval_easy_vqa import image_labels

    labels = image_labels()
    assert len(labels) == 888  # the rest of the 1,000 test images have questions that leave an attribute open
    checked = 0
    for question, answer, image_id in zip(*get_test_questions()):
        if image_id in labels and answer not in ("yes", "no"):
            assert answer in labels[image_id], (question, answer, labels[image_id])
            checked += 1
    assert checked > 1000


@pytest.mark.parametrize("trace, named", [
    ("a red triangle", True), ("<think> red, a triangle </think> A red triangle.", True), ("a red circle", False),
    ("a red or blue triangle", False), ("red", False), ("a triangle and a rectangle, red", False),
])  # fmt: skip
def test_names_scene_needs_the_colour_and_the_shape_and_nothing_else(trace, named):
    from training.eval_easy_vqa import names_scene

    assert names_scene(trace, "red", "triangle") is named
