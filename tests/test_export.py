"""training/export.py: the Hub folder's files, clean reloading, and model cards filled only from files."""

import json
import os

import pytest
import yaml
from transformers import AutoModel

from training.tiny_models import build_backbone_config, build_tokenizer
from training.export import ALLOWED_FILES, FIGURE, ExportArgs, check_export_folder, main, render_card
from tte.configuration_tte import TTEConfig


TAGS = {"sentence-transformers", "feature-extraction", "sentence-similarity", "multimodal-embedding", "custom_code"}


def front_matter(card: str) -> dict:
    assert card.startswith("---\n"), card[:80]
    return yaml.safe_load(card.split("---\n", 2)[1])


def write_results(path) -> dict:
    """A results file in the tte_eval layout, with numbers no template could contain."""
    results = {
        "metadata": {"model_name": "tiny", "benchmark": "mmeb-v2", "created": "2026-01-02T03:04:05+00:00",
                     "model_hash": "ab12", "model_settings": {"think": "queries"},
                     "headline_metric": {"image": "hit@1", "visdoc": "ndcg_linear@5"}},
        "metrics": {"image": {"ImageNet-1K": {"hit@1": 0.61237, "hit@5": 0.9}},
                    "visdoc": {"ViDoRe_arxivqa": {"ndcg_linear@5": 0.43219}}},
        "aggregate": {"scores": {"I-CLS": 61.237, "Image": 61.237, "VisDoc": None}, "missing": {"Image": ["N24News"]}},
        "aggregate_error": None,
    }  # fmt: skip
    path.write_text(json.dumps(results))
    return results


def test_export_writes_only_allowed_files_and_reloads_cleanly(export_folder):
    names = set(check_export_folder(export_folder))
    assert names == ALLOWED_FILES - {"model.safetensors.index.json", FIGURE}  # no plot was given
    model, info = AutoModel.from_pretrained(export_folder, trust_remote_code=True, output_loading_info=True)
    assert (info["missing_keys"], info["unexpected_keys"], info["mismatched_keys"]) == (set(), set(), set())
    config = json.load(open(os.path.join(export_folder, "config.json")))
    assert set(config["auto_map"]) >= {"AutoConfig", "AutoModel"}
    assert json.load(open(os.path.join(export_folder, "generation_config.json")))["do_sample"] is False


def test_export_writes_sentence_transformers_files(export_folder):
    modules = json.load(open(os.path.join(export_folder, "modules.json")))
    assert modules == [{"idx": 0, "name": "0", "path": "", "type": "custom_st.TTESentenceTransformer"}]
    st_config = json.load(open(os.path.join(export_folder, "config_sentence_transformers.json")))
    assert st_config["similarity_fn_name"] == "cosine"
    assert st_config["prompts"] == {"query": "", "document": ""}
    assert set(st_config["requirements"]) == {"transformers", "sentence-transformers", "torch"}
    assert json.load(open(os.path.join(export_folder, "tte_sentence_transformers.json"))) == {"default_side": "query"}


def test_random_export_card_says_so_plainly(export_folder):
    card = open(os.path.join(export_folder, "README.md")).read()
    meta = front_matter(card)
    assert meta["library_name"] == "sentence-transformers" and meta["pipeline_tag"] == "sentence-similarity"
    assert TAGS | {"random-weights"} <= set(meta["tags"])
    assert meta["inference"] is False and meta["license"] == "apache-2.0" and "base_model" not in meta
    assert meta["widget"][0]["source_sentence"] and len(meta["widget"][0]["sentences"]) == 3
    assert "The weights of this model are random: it was never trained." in card
    assert "Not trained: the weights are random." in card
    assert "Not evaluated: no evaluation results were supplied with this export." in card


def test_trained_card_numbers_come_from_results_and_settings_files(export_folder, tmp_path):
    write_results(tmp_path / "results.json")
    (tmp_path / "settings.json").write_text(json.dumps({"learning_rate": 5e-05, "temperature": 0.02}))
    out = tmp_path / "export"
    main(["--checkpoint", export_folder, "--output_dir", str(out), "--repo_id", "tte-org/tiny", "--weights", "trained",
          "--training_settings", str(tmp_path / "settings.json"), "--results", str(tmp_path / "results.json"),
          "--base_model", "Qwen/Qwen2-VL-2B-Instruct", "--no_verify"])  # fmt: skip
    card = (out / "README.md").read_text()
    assert front_matter(card)["base_model"] == "Qwen/Qwen2-VL-2B-Instruct"
    assert "random" not in card.lower() and "Not evaluated" not in card
    assert "| I-CLS | Image | VisDoc |" in card and "| 61.24 | 61.24* | — |" in card
    assert "| ImageNet-1K | image | hit@1 | 61.24 |" in card
    assert "| ViDoRe_arxivqa | visdoc | ndcg_linear@5 | 43.22 |" in card
    assert "| `learning_rate` | `5e-05` |" in card and "| `temperature` | `0.02` |" in card


@pytest.mark.parametrize("variant", ["unified", "student", "teacher"])
def test_each_variant_card_renders_valid_yaml(tmp_path, variant):
    backbone = build_backbone_config("qwen2_vl", build_tokenizer()).to_dict()
    config = TTEConfig(backbone_config=backbone, reasoner_config=backbone if variant == "student" else None,
                       variant=variant, head_num_layers=2)  # fmt: skip
    args = ExportArgs(checkpoint="unused", output_dir="unused", repo_id="tte-org/x", weights="random")
    card = render_card(args, config, text_only=False)
    assert TAGS <= set(front_matter(card)["tags"])
    assert f"Variant TTE_{variant[0]} ({variant})" in card


def test_export_refuses_inconsistent_arguments_and_unfinished_folders(export_folder, tmp_path):
    with pytest.raises(ValueError, match="--weights trained needs --training_settings"):
        ExportArgs(checkpoint=export_folder, output_dir=str(tmp_path / "a"), repo_id="o/x", weights="trained")
    with pytest.raises(ValueError, match="--weights random contradicts --training_settings"):
        ExportArgs(checkpoint=export_folder, output_dir="a", repo_id="o/x", weights="random", training_settings=["s"])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.txt").write_text("x")
    with pytest.raises(ValueError, match="is not empty"):
        main(["--checkpoint", export_folder, "--output_dir", str(tmp_path / "full"), "--repo_id", "o/x",
              "--weights", "random"])  # fmt: skip
    with pytest.raises(ValueError, match=r"files outside the export's allowed set: \['old.txt'\]"):
        check_export_folder(str(tmp_path / "full"))
    (tmp_path / "full" / "old.txt").unlink()
    with pytest.raises(ValueError, match=r"missing files \[.*'config.json'.*'model.safetensors'\]"):
        check_export_folder(str(tmp_path / "full"))


def test_export_copies_the_figure_and_refuses_one_that_is_not_a_png(export_folder, tmp_path):
    from training.compare_variants import draw_plot

    plot = tmp_path / "plot.png"
    draw_plot([{"variant": "a", "think": "never", "tokens": 0.0, "score": 1.0}], "t").savefig(plot)
    out = tmp_path / "out"
    main(["--checkpoint", export_folder, "--output_dir", str(out), "--repo_id", "o/x", "--weights", "random",
          "--figure", str(plot)])  # fmt: skip
    assert FIGURE in check_export_folder(str(out))  # in the sha256 manifest too
    assert (out / FIGURE).read_bytes() == plot.read_bytes()
    (tmp_path / "plot.txt").write_text("not a picture")
    with pytest.raises(ValueError, match=r"--figure .*plot.txt: not a PNG file"):
        main(["--checkpoint", export_folder, "--output_dir", str(tmp_path / "out2"), "--repo_id", "o/x",
              "--weights", "random", "--figure", str(tmp_path / "plot.txt")])  # fmt: skip
    assert not (tmp_path / "out2").exists()


def test_export_help_lists_its_settings(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert all(flag in usage for flag in ("--checkpoint", "--weights", "--results", "--repo_id"))


def test_export_records_a_sha256_manifest_that_the_gate_checks(export_folder, tmp_path):
    import shutil

    from training.export import EXPORT_MANIFEST

    manifest = json.load(open(os.path.join(export_folder, EXPORT_MANIFEST)))
    assert sorted(manifest["files"]) == sorted(set(os.listdir(export_folder)) - {EXPORT_MANIFEST})
    copy = str(tmp_path / "copy")
    shutil.copytree(export_folder, copy)
    check_export_folder(copy)  # intact: passes
    with open(os.path.join(copy, "README.md"), "w") as handle:
        handle.write("")  # a card emptied, as a crash mid-write would leave it
    with pytest.raises(ValueError, match=r"README.md does not match its sha256 in tte_export_manifest.json"):
        check_export_folder(copy)


def test_export_killed_mid_write_leaves_nothing_the_push_gate_accepts(export_folder, tmp_path):
    from tests.training.helpers import run_until_paused_then_kill

    output = tmp_path / "export"
    arguments = ["--checkpoint", export_folder, "--output_dir", str(output), "--repo_id", "o/x", "--weights", "random",
                 "--verify", "false"]  # fmt: skip
    run_until_paused_then_kill("training.export", arguments, pause_after="export-written")  # SIGKILL before the rename
    assert not output.exists()  # the files went to a temporary folder beside it
    with pytest.raises(ValueError, match="is not an export folder"):
        check_export_folder(str(output))
    leftovers = [name for name in os.listdir(tmp_path) if name != "export"]
    main(arguments)  # a rerun writes the export (and is not confused by the dead temporary folder)
    assert check_export_folder(str(output)) and leftovers


def test_export_never_publishes_the_url_opt_in(export_folder, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    AutoModel.from_pretrained(export_folder, trust_remote_code=True).save_pretrained(checkpoint)
    settings = json.loads((checkpoint / "processor_config.json").read_text())
    assert "allow_urls" not in settings  # save_pretrained does not write it
    (checkpoint / "processor_config.json").write_text(json.dumps({**settings, "allow_urls": True}))  # an older save
    main(["--checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "out"), "--repo_id", "o/x",
          "--weights", "random"])  # fmt: skip
    assert "allow_urls" not in json.loads((tmp_path / "out" / "processor_config.json").read_text())


@pytest.mark.parametrize("think", ["auto", "tasks"])
def test_the_tte_mini_card_says_how_its_adaptive_policy_thinks(tmp_path, think):
    backbone = build_backbone_config("qwen2_vl", build_tokenizer()).to_dict()
    config = TTEConfig(backbone_config=backbone, head_num_layers=2, think=think,
                       gate_threshold=0.5 if think == "auto" else None,
                       think_tasks=["vqa", "grounding"] if think == "tasks" else None)  # fmt: skip
    (tmp_path / "comparison.md").write_text("| variant | overall |\n|---|---|\n| unified | 40.0 |\n")
    args = ExportArgs(checkpoint="unused", output_dir="unused", repo_id="o/x", weights="random",
                      card_template="tte-mini", comparison=str(tmp_path / "comparison.md"))  # fmt: skip
    card = " ".join(render_card(args, config, text_only=False).split())
    assert "thinking about every query in the second table" in card
    if think == "tasks":
        assert 'by default (`think="tasks"`) only queries of the grounding, vqa families write a trace' in card
        assert "gate" not in card.split("It knows nothing")[0]
    else:
        assert 'by default (`think="auto"`) the model thinks only about those queries' in card
