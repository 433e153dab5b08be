import pytest

from training.tiny_models import build_backbone_config, build_tokenizer
from tte.configuration_tte import TTEConfig


@pytest.fixture(scope="module")
def backbone_config():
    return build_backbone_config("qwen2_vl", build_tokenizer(), num_layers=4).to_dict()


def test_config_defaults_head_source_layer_to_l_minus_n(backbone_config):
    config = TTEConfig(backbone_config=backbone_config, head_num_layers=3)
    assert config.head_source_layer == 4 - 3
    assert config.embedding_dim == 32
    assert config.matryoshka_dims == [32]


def test_config_round_trips_through_dict(backbone_config):
    config = TTEConfig(backbone_config=backbone_config, head_num_layers=2, matryoshka_dims=[8, 16], think="always")
    again = TTEConfig.from_dict(config.to_dict())
    assert again.backbone_config.model_type == "qwen2_vl"
    assert (again.head_num_layers, again.matryoshka_dims, again.think) == (2, [8, 16, 32], "always")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"variant": "bogus"}, "variant='bogus'"),
        ({"think": "sometimes"}, "think='sometimes'"),
        ({"head_num_layers": 5}, "head_num_layers=5"),
        ({"variant": "student"}, "needs a reasoner_config"),
        ({"matryoshka_dims": [64]}, "matryoshka_dims"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"embedding_dim": 64}, "embedding_dim=64 differs from the backbone's hidden size 32"),
        ({"think": "tasks"}, "think='tasks' needs think_tasks"),
        ({"think_tasks": ["vqa", "vqa"]}, "names a family twice"),
    ],
)
def test_config_rejects_bad_values(backbone_config, kwargs, message):
    with pytest.raises(ValueError, match=message):
        TTEConfig(backbone_config=backbone_config, **{"head_num_layers": 2, **kwargs})


def test_config_rejects_source_layer_inside_qwen3_vl_deepstack():
    backbone_config = build_backbone_config("qwen3_vl", build_tokenizer(), num_layers=4).to_dict()
    backbone_config["vision_config"]["deepstack_visual_indexes"] = [0, 1]
    with pytest.raises(ValueError, match="head_source_layer=2 reads a layer before the backbone's 2 deepstack"):
        TTEConfig(backbone_config=backbone_config, head_num_layers=2)


def test_think_tasks_are_kept_sorted_and_round_trip(backbone_config):
    config = TTEConfig(backbone_config=backbone_config, head_num_layers=2, think="tasks", think_tasks=["vqa", "grounding"])
    again = TTEConfig.from_dict(config.to_dict())
    assert (again.think, again.think_tasks) == ("tasks", ["grounding", "vqa"])
    assert TTEConfig(backbone_config=backbone_config, head_num_layers=2, think="tasks", think_tasks=[]).think_tasks == []


@pytest.mark.parametrize("think_tasks", ["vqa", [1], 3])
def test_think_tasks_must_be_a_list_of_names(backbone_config, think_tasks):
    with pytest.raises(TypeError, match="think_tasks must be a list of task family names"):
        TTEConfig(backbone_config=backbone_config, head_num_layers=2, think_tasks=think_tasks)
