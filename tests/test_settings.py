"""Settings: overrides from the command line, their errors, the paper's setters, saved settings."""
import json

import pytest

import settings


@pytest.fixture(autouse=True)
def restore_settings():
    saved = settings.resolved()
    yield
    settings.update(**saved)


def test_overrides_are_typed_and_applied():
    flags = settings.parse_command_line(["--metric=cosine", "--batch_size=7", "--learning_rate=2e-4",
                                         "--offline=false", "--resume"], flags={"resume": False})
    assert flags == {"resume": True}
    assert (settings.metric, settings.batch_size, settings.learning_rate, settings.offline) == ("cosine", 7, 2e-4, False)
    assert isinstance(settings.learning_rate, float) and isinstance(settings.batch_size, int)


@pytest.mark.parametrize("arg, words", [
    ("--bogus=1", ["unknown", "bogus"]),
    ("--batch_size=abc", ["batch_size", "int", "abc"]),
    ("--metric=manhattan", ["metric", "euclidean", "cosine"]),
    ("--offline=maybe", ["offline", "bool"]),
    ("--batch_size", ["batch_size", "needs a value"]),
    ("metric=cosine", ["--key=value"]),
])
def test_bad_overrides_exit_2_with_one_line_naming_the_setting(arg, words, capsys):
    with pytest.raises(settings.SettingsError):
        settings.parse_command_line([arg], flags={"resume": False})
    with pytest.raises(SystemExit) as e:
        settings.cli(lambda resume: None, flags={"resume": False}, argv=[arg])
    assert e.value.code == 2
    message = capsys.readouterr().err
    assert message.startswith("error:") and message.count("\n") == 1
    for w in words:
        assert w in message


def test_cli_shows_the_traceback_only_with_debug():
    def main():
        raise FileNotFoundError("data/x.jsonl: file not found")

    with pytest.raises(SystemExit):
        settings.cli(main, argv=[])
    with pytest.raises(FileNotFoundError):
        settings.cli(main, argv=["--debug"])


def test_resolved_checks_without_changing_the_module():
    cfg = settings.resolved(metric="cosine", epochs=3)
    assert cfg["metric"] == "cosine" and cfg["epochs"] == 3
    assert settings.metric == "euclidean"
    with pytest.raises(settings.SettingsError, match="epochs"):
        settings.resolved(epochs="three")
    with pytest.raises(settings.SettingsError, match="unknown setting 'epoch'"):
        settings.resolved(epoch=3)


def test_paper_setters_and_saved_settings_hide_the_key(tmp_path):
    settings.set_save_name("SemCSE_test")
    settings.set_encoder_checkpoint("some/model")
    settings.update(llm_api_key="sk-secret-123")
    path = settings.save_settings(str(tmp_path), extra_field=1)
    saved = json.loads(open(path).read())
    assert saved["save_name"] == "SemCSE_test" and saved["encoder_checkpoint"] == "some/model"
    assert saved["extra_field"] == 1
    assert "sk-secret-123" not in open(path).read() and "llm_api_key" not in saved


def test_temperature_defaults_per_metric():
    assert settings.temperature_for(settings.resolved(metric="cosine")) == 0.05
    assert settings.temperature_for(settings.resolved(metric="euclidean")) == 1.0
    assert settings.temperature_for(settings.resolved(metric="cosine", temperature=0.1)) == 0.1
