"""The prefix cache: each task family's shared template prefix is run once, and embeddings stay exact."""

import copy

import pytest
import torch

from tests.conftest import make_image, run_concurrently, tiny_export_model
from training.tiny_models import BACKBONES
from tte.modeling_tte import PrefixCache, PrefixStates
from tte.processing_tte import TTEInput


VARIANTS = ("unified", "student", "teacher")


def mixed_inputs(name: str) -> list:
    image = {"text": "what is this", "image": make_image(1)} if name != "llama" else "what is this shape"
    return ["a red circle", image, {"image": make_image(2)} if name != "llama" else "x", "the blue square above it"]


def embed_both_ways(model, inputs, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """(without the cache, with it); the shared model's switch is put back afterwards."""
    try:
        model.config.use_prefix_cache = False
        whole = model.embed(inputs, convert_to_tensor=True, **kwargs)
        model.config.use_prefix_cache = True
        cached = model.embed(inputs, convert_to_tensor=True, **kwargs)
    finally:
        model.config.use_prefix_cache = True
    return whole, cached


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", BACKBONES)
def test_cached_prefix_gives_the_embeddings_of_whole_sequences(tiny_tte, name, variant):
    model = tiny_tte(name, variant)
    inputs = mixed_inputs(name)
    traces = ["it is red", "a shape", "", "blue and square"]
    for kwargs in ({"think": False}, {"reasoning": traces}, {"side": "document", "think": False}):
        whole, cached = embed_both_ways(model, inputs, **kwargs)
        torch.testing.assert_close(cached, whole, atol=1e-5, rtol=0)


def test_prefix_runs_once_and_later_calls_feed_only_what_follows_it(tiny_tte):
    model = copy.deepcopy(tiny_tte("qwen2_vl", "unified"))
    fed = []
    hook = model.get_input_embeddings().register_forward_hook(lambda module, args, output: fed.append(args[0].shape))
    try:
        items = model.processor.parse_inputs(["a red circle", "the blue square above the green star"])
        width = model.processor.build_embedding_inputs(items, ["", ""])["input_ids"].shape[1]
        prefix = len(model.processor.shared_prefix_ids("retrieval"))
        model.embed(["a red circle", "the blue square above the green star"], think=False)
        assert fed == [(1, prefix), (2, width - prefix)]  # the prefix once, then what follows it in each row
        fed.clear()
        model.embed(["a red circle", "the blue square above the green star"], think=False)
        assert fed == [(2, width - prefix)]
    finally:
        hook.remove()


@pytest.mark.parametrize("variant", VARIANTS)
def test_task_families_mixed_in_one_batch_each_get_their_own_prefix(tiny_tte, variant):
    model = copy.deepcopy(tiny_tte("qwen2_vl", variant))
    inputs = [{"text": "a red circle", "task": "vqa"}, "a blue square", {"image": make_image(4), "task": "vqa"},
              {"text": "a star", "task": "classification"}]  # fmt: skip
    whole, cached = embed_both_ways(model, inputs, think=False)
    torch.testing.assert_close(cached, whole, atol=1e-5, rtol=0)
    assert len(model._prefix_cache) == 3


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", ["qwen2_vl", "llama"])
def test_training_forward_gives_the_gradients_of_whole_sequences(tiny_tte, name, variant):
    model = copy.deepcopy(tiny_tte(name, variant)).train()
    processor = model.processor
    inputs = [{"text": "a red circle", "task": "vqa"}, "a blue square", {"text": "a star", "task": "classification"}]
    features = processor.build_embedding_inputs(processor.parse_inputs(inputs), ["it is red", "", "five points"])
    gradients = {}
    for cache in (False, True):
        model.config.use_prefix_cache = cache
        model.zero_grad()
        embeddings = model(**features).embeddings
        (embeddings * torch.linspace(-1, 1, embeddings.shape[1])).sum().backward()
        gradients[cache] = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    assert len(model._prefix_cache) == 0  # with gradients, prefixes are computed in the graph, never cached
    assert gradients[True].keys() == gradients[False].keys() and gradients[True]
    for key, gradient in gradients[False].items():
        torch.testing.assert_close(gradients[True][key], gradient, atol=1e-5, rtol=1e-4)


def test_weights_changed_in_place_never_get_stale_prefix_states(tiny_tte):
    model = copy.deepcopy(tiny_tte("qwen2_vl", "teacher"))
    before = model.embed(["a red circle"], think=False, convert_to_tensor=True)
    with torch.no_grad():
        value = model.backbone.language_model.layers[0].self_attn.v_proj.weight
        value.add_(torch.randn(value.shape, generator=torch.Generator().manual_seed(0)))  # as an optimizer step would
    whole, cached = embed_both_ways(model, ["a red circle"], think=False)
    torch.testing.assert_close(cached, whole, atol=1e-5, rtol=0)
    assert not torch.allclose(whole, before, atol=1e-2)


def test_rows_that_do_not_start_with_the_prefix_are_embedded_whole(tiny_tte, monkeypatch):
    model = copy.deepcopy(tiny_tte("qwen2_vl", "unified"))
    processor = model.processor
    items = processor.parse_inputs(["red circle", "blue square"])
    first_row = processor.build_embedding_inputs(items[:1], [""])["input_ids"][0].tolist()
    shared = processor.shared_prefix_ids("retrieval")
    longer = first_row[: len(shared) + 1]  # also holds the first input's first token, which the second row lacks
    monkeypatch.setattr(processor, "shared_prefix_ids", lambda task: list(longer))
    whole, cached = embed_both_ways(model, ["red circle", "blue square"], think=False)
    torch.testing.assert_close(cached, whole, atol=1e-5, rtol=0)
    assert [key[0] for key in model._prefix_cache._entries] == [tuple(longer)]
    lengths = processor.build_embedding_inputs(items, ["", ""])["prefix_lengths"].tolist()
    assert lengths == [len(longer), 0]


def test_concurrent_calls_share_the_cache_and_get_their_own_embeddings(tiny_tte):
    model = copy.deepcopy(tiny_tte("qwen2_vl", "unified"))
    texts = [["a red circle"], ["the blue square", "a green star"], [{"text": "what is it", "image": make_image(3)}]]
    model.config.use_prefix_cache = False
    expected = [model.embed(batch, think=False, convert_to_tensor=True) for batch in texts]
    model.config.use_prefix_cache = True
    for results in run_concurrently(lambda batch: model.embed(batch, think=False, convert_to_tensor=True), texts):
        for result, reference in zip(results, expected):
            torch.testing.assert_close(result, reference, atol=1e-5, rtol=0)
    assert len(model._prefix_cache) == 1


def test_prefix_cache_is_bounded_and_evicts_the_least_recently_used():
    cache, computed = PrefixCache(max_entries=2), []

    def compute(name):
        computed.append(name)
        return PrefixStates(1, (), None)

    for name in ("a", "b", "a", "c", "a", "b"):
        cache.get((name,), lambda: compute(name))
    assert computed == ["a", "b", "c", "b"] and len(cache) == 2  # "b" was evicted by "c", "a" was used last


@pytest.mark.parametrize("name", BACKBONES)
def test_shared_prefix_is_where_prompts_of_a_family_start_to_differ(tiny_tte, name):
    processor = tiny_tte(name, "unified").processor
    for task in ("retrieval", "vqa"):
        prefix = processor.shared_prefix_ids(task)
        items = [TTEInput("red circle", None, None, task), TTEInput("blue", None, "find it", task)]
        if not processor.text_only:
            items.append(TTEInput(None, make_image(0), None, task))
        rows = [processor.tokenizer(processor.build_prompt(item), add_special_tokens=False)["input_ids"]
                for item in items]  # fmt: skip
        assert prefix and all(row[: len(prefix)] == prefix for row in rows)
        assert len({row[len(prefix)] for row in rows}) == len(rows)  # the next token is already the input's
        assert processor.shared_prefix_ids(task) != processor.shared_prefix_ids("classification")


def test_prefixes_are_not_shared_while_dropout_draws_masks(tiny_tte):
    model = copy.deepcopy(tiny_tte("qwen2_vl", "teacher"))
    model.backbone.language_model.layers[0].mlp.down_proj = torch.nn.Sequential(
        model.backbone.language_model.layers[0].mlp.down_proj, torch.nn.Dropout(0.5))  # fmt: skip
    fed = []
    model.get_input_embeddings().register_forward_hook(lambda module, args, output: fed.append(args[0].shape[1]))
    features = model.processor.build_embedding_inputs(model.processor.parse_inputs(["a", "b c"]), ["", ""])
    model.train()(**features)
    model.eval()(**features)
    assert fed == [features["input_ids"].shape[1], len(model.processor.shared_prefix_ids("retrieval")),
                   features["input_ids"].shape[1] - len(model.processor.shared_prefix_ids("retrieval"))]


def _sft_chunk(model, inputs, traces):
    return model.processor.build_sft_inputs(model.processor.parse_inputs(inputs), traces)


@pytest.mark.parametrize("trainable", ["vision tower", "lora"])
def test_next_token_loss_runs_prefixes_once_with_the_loss_and_gradients_of_whole_sequences(tiny_tte, trainable):
    from peft import LoraConfig, get_peft_model

    from training.losses import next_token_loss

    tte = copy.deepcopy(tiny_tte("qwen2_vl", "unified")).double()
    chunk = _sft_chunk(tte, [{"text": "what colour?", "image": make_image(5), "task": "vqa"}, "a red circle",
                             {"text": "which shape", "task": "vqa"}], ["red", "it is round", "a star"])  # fmt: skip
    generator = tte.generator().train()
    tte.requires_grad_(False)
    if trainable == "lora":
        torch.manual_seed(0)  # the random LoRA weights, whatever the tests before this one drew
        generator = get_peft_model(generator, LoraConfig(r=4, lora_dropout=0.0, init_lora_weights=False,
                                                         target_modules=["q_proj", "v_proj"]))  # fmt: skip
    else:
        generator.model.visual.requires_grad_(True)
    fed = []
    tte.get_input_embeddings().register_forward_hook(lambda module, args, output: fed.append(tuple(args[0].shape)))
    results = {}
    for shared in (False, True):
        generator.zero_grad()
        inputs = chunk if shared else {key: value for key, value in chunk.items() if key != "prefix_lengths"}
        loss = next_token_loss(generator, inputs)
        loss.backward()
        gradients = {name: p.grad.clone() for name, p in generator.named_parameters() if p.grad is not None}
        results[shared] = loss.detach(), gradients
    torch.testing.assert_close(results[True][0], results[False][0], atol=1e-10, rtol=0)
    assert results[True][1].keys() == results[False][1].keys() and results[True][1]
    for name, gradient in results[False][1].items():
        torch.testing.assert_close(results[True][1][name], gradient, atol=1e-8, rtol=1e-6)
    width, prefixes = chunk["input_ids"].shape[1], chunk["prefix_lengths"].tolist()
    assert fed[0] == (3, width) and sorted(fed[1:-1]) == [(1, n) for n in sorted(set(prefixes))]
    assert fed[-1][1] == max(int(chunk["attention_mask"][i].sum()) - n for i, n in enumerate(prefixes))


def test_next_token_loss_runs_whole_rows_while_dropout_draws_masks(tiny_tte):
    from peft import LoraConfig, get_peft_model

    from training.losses import next_token_loss

    tte = copy.deepcopy(tiny_tte("qwen2_vl", "unified"))
    chunk = _sft_chunk(tte, ["a red circle", "a blue square"], ["red", "blue"])
    generator = get_peft_model(tte.generator(), LoraConfig(r=4, lora_dropout=0.5, target_modules=["q_proj"])).train()
    fed = []
    tte.get_input_embeddings().register_forward_hook(lambda module, args, output: fed.append(tuple(args[0].shape)))
    next_token_loss(generator, chunk)
    assert fed == [tuple(chunk["input_ids"].shape)]


@pytest.mark.parametrize("variant", ["student", "unified"])
@pytest.mark.parametrize("name", BACKBONES)
def test_generation_from_cached_prefixes_writes_the_same_traces(tiny_tte, name, variant):
    model = copy.deepcopy(tiny_tte(name, variant, max_new_tokens=8))
    inputs = ["a red circle", {"text": "what is above it", "task": "vqa"}]
    inputs += [{"text": "what", "image": make_image(6), "task": "vqa"}] if name != "llama" else ["the star"]
    items = model.processor.parse_inputs(inputs)
    fed = []
    model.generator().get_input_embeddings().register_forward_hook(
        lambda module, args, output: fed.append(tuple(args[0].shape)))  # fmt: skip
    traces, text_traces = {}, {}
    for cache in (False, True):
        model.config.use_prefix_cache = cache
        fed.clear()
        traces[cache] = model.generate_traces(items)[0]
        text_traces[cache] = model.generate_traces(items[:2])[0]  # Qwen-VL keeps the last call's M-RoPE offsets
    assert traces[True] == traces[False] and text_traces[True] == text_traces[False]
    whole = model.processor.build_reasoning_inputs(items, with_prefix_lengths=True)
    rest = int((whole["attention_mask"].sum(dim=1) - whole["prefix_lengths"]).max())
    prefixes = sorted({len(model.processor.shared_prefix_ids(item.task)) for item in items})
    prefill = next(shape for shape in fed if shape[0] == 3)
    assert sorted(fed[: fed.index(prefill)]) == [(1, n) for n in prefixes] and prefill == (3, rest)


def test_endpoint_handler_and_sentence_transformers_use_the_cache_and_give_the_uncached_vectors(export_folder):
    from sentence_transformers import SentenceTransformer

    from tests.test_handler import load_handler

    texts = ["a red square", {"text": "what is on the table ?", "image": make_image(8), "task": "vqa"}]
    reference = copy.deepcopy(tiny_export_model())
    reference.config.use_prefix_cache = False
    handler = load_handler(export_folder)
    reply = handler({"inputs": ["a red square", "a blue circle"], "parameters": {"think": False}})
    torch.testing.assert_close(torch.tensor(reply), reference.embed(["a red square", "a blue circle"], think=False,
                                                                    convert_to_tensor=True), atol=1e-5, rtol=0)  # fmt: skip
    assert len(handler.model._prefix_cache) == 1
    st = SentenceTransformer(export_folder, trust_remote_code=True, device="cpu")
    vectors = st.encode_document(texts, convert_to_tensor=True)
    torch.testing.assert_close(vectors, reference.embed(texts, side="document", convert_to_tensor=True), atol=1e-5,
                               rtol=0)  # fmt: skip
    assert len(st[0].model._prefix_cache) == 2


@pytest.mark.parametrize("name", BACKBONES)
def test_unified_single_pass_from_cached_prefixes_gives_the_uncached_embeddings_and_traces(tiny_tte, name):
    model = copy.deepcopy(tiny_tte(name, "unified"))
    inputs = mixed_inputs(name) + [{"text": "what is above the star", "task": "vqa"}]
    results = {}
    for cache in (False, True):
        model.config.use_prefix_cache = cache
        results[cache] = model.embed(inputs, think=True, return_reasoning=True, convert_to_tensor=True)
    assert results[True][1] == results[False][1] and all(results[True][1])
    torch.testing.assert_close(results[True][0], results[False][0], atol=1e-5, rtol=0)


def test_concurrent_generation_from_cached_prefixes_equals_single_threaded(tiny_tte):
    model = copy.deepcopy(tiny_tte("qwen2_vl", "student", max_new_tokens=6))
    batches = [["a red circle"], [{"text": "what", "image": make_image(9), "task": "vqa"}, "the blue square"],
               [{"image": make_image(10)}, "a star", {"text": "which", "task": "vqa"}]]  # fmt: skip
    expected = [model.embed(batch, think=True, return_reasoning=True, convert_to_tensor=True) for batch in batches]
    call = lambda batch: model.embed(batch, think=True, return_reasoning=True, convert_to_tensor=True)  # noqa: E731
    for results in run_concurrently(call, batches):
        for (vectors, traces), (wanted, wanted_traces) in zip(results, expected):
            assert traces == wanted_traces
            torch.testing.assert_close(vectors, wanted, atol=1e-6, rtol=0)
