"""Reasoner SFT: prompt masking, the token-weighted loss, and end-to-end runs on tiny random-weight models."""

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from transformers import AutoModel

from training.tiny_models import build_tte
from tests.training.helpers import read_metrics, saved_weights, train_arguments
from training.data import PairDataset, SFTCollator, load_sources
from training.losses import next_token_step
from training.train_reasoner import main


TRACES = {("words/0", "query"): "<think> red </think> a red cat", ("pictures/2", "query"): "<think> blue </think>",
          ("words/5", "query"): ""}  # fmt: skip


@pytest.fixture(scope="module")
def student():
    return build_tte("qwen2_vl", "student")


@pytest.fixture
def sft_batch(student, pair_data):
    """One SFT chunk of a text query, an image query and an empty trace."""
    dataset = PairDataset(load_sources(pair_data))
    examples = [dataset[0], dataset[34], dataset[5]]
    return examples, SFTCollator(student.processor, TRACES, ("query",), chunk_size=8)(examples)[0]


def test_main_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--freeze_vision" in capsys.readouterr().out


def test_sft_collator_labels_only_the_trace_and_the_stop_token(student, sft_batch):
    examples, chunk = sft_batch
    processor = student.processor
    prompts = processor.build_reasoning_inputs([processor.parse_input(e.inputs["query"], 0) for e in examples])
    for i, example in enumerate(examples):
        trace = TRACES[(example.id, "query")]
        target = processor.tokenizer(trace, add_special_tokens=False)["input_ids"] + [processor.tokenizer.eos_token_id]
        mask = chunk["attention_mask"][i].bool()
        labels, ids = chunk["labels"][i][mask].tolist(), chunk["input_ids"][i][mask].tolist()
        prompt = prompts["input_ids"][i][prompts["attention_mask"][i].bool()].tolist()
        assert ids == prompt + target  # exactly the reasoning prompt, then the trace and the stop token
        assert labels == [-100] * len(prompt) + target
    assert torch.equal(chunk["pixel_values"], prompts["pixel_values"])
    image_tokens = chunk["input_ids"] == processor.image_token_id
    assert image_tokens.any() and torch.equal(chunk["mm_token_type_ids"] == 1, image_tokens)


def test_next_token_loss_is_computed_on_trace_tokens_only(student, sft_batch):
    _, chunk = sft_batch
    generator = student.reasoner
    loss = generator(**chunk).loss
    logits = generator(**{key: value for key, value in chunk.items() if key != "labels"}).logits
    predicted, targets = logits[:, :-1], chunk["labels"][:, 1:]
    on_trace = targets != -100
    assert torch.allclose(loss, F.cross_entropy(predicted[on_trace], targets[on_trace]), atol=1e-5)
    unmasked = chunk["input_ids"][:, 1:].masked_fill(chunk["attention_mask"][:, 1:] == 0, -100)
    assert abs(loss.item() - F.cross_entropy(predicted.transpose(1, 2), unmasked).item()) > 1e-2  # prompt counts


def test_next_token_step_weights_chunks_by_their_label_tokens(student, pair_data, sft_batch):
    examples, whole = sft_batch
    chunks = SFTCollator(student.processor, TRACES, ("query",), chunk_size=2)(examples)  # 2 rows + 1 row
    generator = student.reasoner.train()
    assert next_token_step(generator, Accelerator(cpu=True), chunks)["lm_loss"] == pytest.approx(
        generator(**whole).loss.item(), abs=1e-5
    )
    generator.zero_grad()


def test_train_reasoner_loss_decreases_and_only_the_reasoner_changes(tmp_path, model_folder, pair_data, trace_store):
    output = str(tmp_path / "run")
    exported = main(train_arguments(model_folder("student"), pair_data, trace_store, output, "--max_steps", "30",
                               "--learning_rate", "1e-2"))  # fmt: skip
    losses = [record["lm_loss"] for record in read_metrics(output)]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    weights, initial = saved_weights(exported), saved_weights(model_folder("student"))
    changed = {name for name in initial if not torch.equal(weights[name], initial[name])}
    assert "reasoner.model.layers.0.self_attn.q_proj.weight" in changed  # the saved (legacy Qwen2-VL) key layout
    assert all(name.startswith("reasoner.") and ".visual." not in name for name in changed)  # embedder, vision: frozen
    model = AutoModel.from_pretrained(exported, trust_remote_code=True)
    _, traces = model.embed(["what colour is the cat ? red"], return_reasoning=True)
    assert traces[0].startswith("<think>")  # every SFT trace starts so; the random-weight start did not


def test_train_reasoner_lora_on_a_unified_backbone_is_merged(tmp_path, model_folder, pair_data, trace_store):
    exported = main(train_arguments(model_folder("unified"), pair_data, trace_store, str(tmp_path / "run"),
                               "--max_steps", "2", "--lora"))  # fmt: skip
    weights, initial = saved_weights(exported), saved_weights(model_folder("unified"))
    assert weights.keys() == initial.keys()
    changed = {name for name in initial if not torch.equal(weights[name], initial[name])}
    assert "backbone.model.layers.0.self_attn.q_proj.weight" in changed
    assert all(name.startswith("backbone.model.layers.") for name in changed)  # merged into the projections only


def test_train_reasoner_lora_trains_the_vision_tower_when_asked(tmp_path, model_folder, pair_data, trace_store):
    initial = saved_weights(model_folder("unified"))
    changed = {}
    for freeze in ("true", "false"):
        exported = main(train_arguments(model_folder("unified"), pair_data, trace_store, str(tmp_path / freeze),
                                   "--max_steps", "4", "--lora", "--freeze_vision", freeze))  # fmt: skip
        weights = saved_weights(exported)
        changed[freeze] = {name for name in initial if not torch.equal(weights[name], initial[name])}
    assert not any(".visual." in name for name in changed["true"])  # the default: adapters only
    tower = {name for name in changed["false"] if ".visual." in name}
    assert tower and changed["false"] == changed["true"] | tower  # the same merged projections, and the tower


def test_train_reasoner_rejects_a_teacher_model(tmp_path, model_folder, pair_data, trace_store):
    with pytest.raises(ValueError, match="'teacher' model: it has no reasoner"):
        main(train_arguments(model_folder("teacher"), pair_data, trace_store, str(tmp_path / "run"), "--max_steps", "1"))
