"""Settings parsing and the process-count guard of the training loop."""

import json

import pytest
import yaml

from training.loop import TrainSettings, make_accelerator, parse_settings
from training.train_embedder import EmbedderSettings


REQUIRED = {"model_path": "m", "data_config": "d.yaml", "output_dir": "o"}


def test_parse_settings_reads_a_yaml_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**REQUIRED, "max_steps": 7, "lora": True, "temperature": 0.05}))
    settings = parse_settings(EmbedderSettings, [str(path)])
    assert (settings.max_steps, settings.lora, settings.temperature, settings.lora_r) == (7, True, 0.05, 16)


def test_parse_settings_reads_a_json_file(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({**REQUIRED, "trace_sides": "query,positive"}))
    assert parse_settings(EmbedderSettings, [str(path)]).trace_sides == "query,positive"


def test_parse_settings_rejects_unknown_keys_in_a_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**REQUIRED, "epochs": 3}))
    with pytest.raises(ValueError, match="epochs"):
        parse_settings(EmbedderSettings, [str(path)])


def test_parse_settings_reads_flags():
    settings = parse_settings(TrainSettings, ["--model_path", "m", "--data_config", "d", "--output_dir", "o",
                                              "--resume", "--block_size", "4"])  # fmt: skip
    assert settings.resume and settings.block_size == 4


@pytest.mark.parametrize(
    "field, value, message",
    [("max_steps", 0, "--max_steps must be >= 1"), ("mixed_precision", "fp8", "--mixed_precision must be"),
     ("dtype", "float13", "--dtype 'float13' is not a torch dtype"), ("max_grad_norm", 0.0, "must be > 0")],
)  # fmt: skip
def test_train_settings_reject_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainSettings(**REQUIRED, **{field: value})


@pytest.mark.parametrize("fast, resolved", [(True, "bf16"), (False, "no")])
def test_auto_mixed_precision_resolves_by_the_hardware_before_the_settings_are_saved(monkeypatch, fast, resolved):
    monkeypatch.setattr("training.loop.fast_bf16", lambda: fast)
    assert TrainSettings(**REQUIRED, mixed_precision="auto").mixed_precision == resolved


def test_fast_bf16_is_false_where_onednn_has_no_native_bf16(monkeypatch):
    from training.loop import fast_bf16

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr("torch.ops.mkldnn._is_mkldnn_bf16_supported", lambda: False)
    assert fast_bf16() is False


def test_make_accelerator_refuses_to_run_alone_when_several_processes_were_launched(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="launched 2 processes but accelerate joined 1; .* ACCELERATE_USE_CPU=1"):
        make_accelerator()


def test_start_run_refuses_an_fsdp_config_that_accelerate_dropped(tmp_path, monkeypatch):
    from accelerate.state import AcceleratorState, PartialState

    from training.loop import start_run

    # What `accelerate launch --config_file fsdp.yaml` sets; on a machine without GPUs accelerate ignores it.
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    settings = TrainSettings(**{**REQUIRED, "output_dir": str(tmp_path / "run")})
    try:
        with pytest.raises(ValueError, match="an FSDP config was given but accelerate set up"):
            start_run(settings)
    finally:
        AcceleratorState._reset_state(True)  # the next test builds its own accelerator
        PartialState._reset_state()
