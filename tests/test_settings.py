"""Settings: overrides from the command line, their errors, the paper's setters, saved settings."""
import json

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from semcse import cli
from semcse import files
import settings


@pytest.fixture(autouse=True)
def restore_settings():
    saved = settings.resolved()
    yield
    settings.update(**saved.as_dict())


def test_overrides_are_typed_and_applied():
    flags = cli.parse_command_line(["--metric=cosine", "--batch_size=7", "--learning_rate=2e-4",
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
        cli.parse_command_line([arg], flags={"resume": False})
    assert_one_line_exit_2(lambda resume: None, arg, words, "error:", capsys)


def test_cli_shows_the_traceback_only_with_debug():
    def main():
        raise FileNotFoundError("data/x.jsonl: file not found")

    with pytest.raises(SystemExit):
        cli.cli(main, argv=[])
    with pytest.raises(FileNotFoundError):
        cli.cli(main, argv=["--debug"])


def test_resolved_checks_without_changing_the_module():
    default = settings.metric  # "auto" now (the model's own); "euclidean" before
    cfg = settings.resolved(metric="cosine", epochs=3)
    assert cfg.metric == "cosine" and cfg.epochs == 3
    assert settings.metric == default != "cosine"
    with pytest.raises(settings.SettingsError, match="epochs"):
        settings.resolved(epochs="three")
    with pytest.raises(settings.SettingsError, match="unknown setting 'epoch'"):
        settings.resolved(epoch=3)


def test_paper_setters_and_saved_settings_hide_the_key(tmp_path):
    settings.set_save_name("SemCSE_test")
    settings.set_encoder_checkpoint("some/model")
    settings.update(llm_api_key="sk-secret-123")
    path = files.save_settings(str(tmp_path), extra_field=1)
    saved = json.loads(open(path).read())
    assert saved["save_name"] == "SemCSE_test" and saved["encoder_checkpoint"] == "some/model"
    assert saved["extra_field"] == 1
    assert "sk-secret-123" not in open(path).read() and "llm_api_key" not in saved


def test_temperature_defaults():
    assert settings.temperature_for(settings.resolved(metric="cosine")) == 0.05
    assert settings.temperature_for(settings.resolved(metric="euclidean")) == 0.05  # distances scaled in the loss
    assert settings.temperature_for(settings.resolved(metric="cosine", temperature=0.1)) == 0.1


@pytest.mark.parametrize("arg, words", [
    ("--learning_rate=-1", ["learning_rate", ">= 0", "-1.0"]),
    ("--learning_rate=nan", ["learning_rate", "finite"]),
    ("--max_grad_norm=inf", ["max_grad_norm", "finite"]),
    ("--batch_size=1", ["batch_size", ">= 2"]),
    ("--batch_size=-3", ["batch_size", ">= 2"]),
    ("--epochs=0", ["epochs", ">= 1"]),
    ("--eval_every=0", ["eval_every", ">= 1"]),
    ("--validation_size=0", ["validation_size", ">= 2"]),
    ("--validation_size=1", ["validation_size", ">= 2"]),
    ("--max_steps=-1", ["max_steps", ">= 0"]),
    ("--temperature=-0.5", ["temperature", ">= 0"]),
    ("--encode_batch_size=-1", ["encode_batch_size", ">= 1"]),
    ("--knn_k=0", ["knn_k", ">= 1"]),
    ("--score_memory_mb=0", ["score_memory_mb", "> 0"]),
    ("--max_length=1", ["max_length", ">= 2"]),
    ("--seed=-1", ["seed", "2**32"]),
    ("--device=gpu", ["device", "cuda:N", "'gpu'"]),
    ("--device=cuda:x", ["device", "cuda:N"]),
    ("--pooling=max", ["pooling", "auto", "cls", "mean"]),
    ("--save_name=a/b", ["save_name", "folder name"]),
    ("--train_summaries_file= ", ["train_summaries_file", "not empty"]),
    ("--llm_top_p=0", ["llm_top_p", "> 0 and <= 1"]),
    ("--llm_temperature=3", ["llm_temperature", "between 0 and 2"]),
    ("--llm_concurrency=0", ["llm_concurrency", "between 1 and 256"]),
    ("--llm_timeout=0", ["llm_timeout", "> 0"]),
    ("--summaries_per_abstract=1", ["summaries_per_abstract", ">= 2"]),
])
def test_every_range_is_checked_at_start_up_with_the_setting_named(arg, words, capsys):
    assert_one_line_exit_2(lambda resume: pytest.fail("ran with a bad setting"), arg, words, "error: setting ", capsys)


def test_every_number_and_choice_has_a_check_and_the_defaults_pass_it():
    numeric = {k for k, t in settings._TYPES.items() if t in (int, float)}
    assert numeric - set(settings._CHECKS) == set()  # a new numeric setting needs its range in _CHECKS
    assert set(settings._CHECKS) <= set(settings._TYPES)  # no check for a misspelt name
    settings.resolved()  # the defaults themselves are in range
    settings.update(batch_size=2, validation_size=2, learning_rate=0.0, temperature=0.0, device="cuda:1")
    with pytest.raises(settings.SettingsError, match="'batch_size' must be >= 2, got 1"):
        settings.resolved(batch_size=1)  # overrides passed to functions are checked as well


def test_a_bad_value_edited_into_settings_py_is_refused_too(monkeypatch):
    monkeypatch.setattr(settings, "eval_every", 0)  # as if settings.py said eval_every = 0
    with pytest.raises(settings.SettingsError, match="'eval_every' must be >= 1, got 0"):
        settings.resolved()


def test_error_policy_user_errors_exit_2_bugs_show_their_traceback(tmp_path, capsys):
    import errno

    import numpy as np

    from load_data import DataError

    def fail(exc):
        def main():
            raise exc
        return main

    for exc in [DataError("x.jsonl:3: missing field 'id'"), settings.SettingsError("setting 'a' must be b"),
                FileNotFoundError(errno.ENOENT, "No such file or directory", str(tmp_path / "in.jsonl")),
                OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out"))]:
        with pytest.raises(SystemExit) as e:
            cli.cli(fail(exc), argv=[])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1, err
    with pytest.raises(SystemExit):
        cli.cli(fail(FileNotFoundError(errno.ENOENT, "No such file or directory", "data/in.jsonl")), argv=[])
    assert capsys.readouterr().err == "error: data/in.jsonl: No such file or directory\n"
    # A ValueError or RuntimeError from inside numpy/torch, or a bare OSError, is a bug: its traceback shows.
    with pytest.raises(ValueError):
        cli.cli(lambda: np.zeros(3).reshape(2, 2), argv=[])
    with pytest.raises(RuntimeError):
        cli.cli(fail(RuntimeError("CUDA error")), argv=[])
    with pytest.raises(ConnectionResetError):
        cli.cli(fail(ConnectionResetError(errno.ECONNRESET, "reset")), argv=[])


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path):
    import errno

    path = tmp_path / "results.json"
    path.write_text("old")
    with pytest.raises(OSError) as e:
        with files.atomic_write(str(path)) as f:
            f.write("half of the new")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert e.value.filename == str(path) and e.value.errno == errno.ENOSPC
    assert cli.one_line(e.value) == f"{path}: No space left on device"
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


@given(st.sampled_from(sorted(settings._TYPES)), st.text(max_size=12))
@hsettings(max_examples=300, deadline=None)
def test_messages_are_one_line_whatever_the_value(key, value):
    """Any text for any setting (newlines, quotes, control characters) is taken or refused in one line,
    on the command line too."""
    saved = settings.resolved()
    try:
        for attempt in (lambda: settings.resolved(**{key: value}),
                        lambda: cli.parse_command_line([f"--{key}={value}", value], flags={"resume": False})):
            try:
                attempt()
            except settings.SettingsError as e:
                assert "\n" not in str(e) and "\r" not in str(e)
    finally:
        settings.update(**saved.as_dict())
    assert "\n" not in cli.one_line(ValueError(f"two\nlines {value}"))


def assert_one_line_exit_2(main, arg: str, words: list[str], prefix: str, capsys) -> None:
    """`arg` on the command line of `main` exits 2 with one line starting `prefix` and naming `words`."""
    with pytest.raises(SystemExit) as e:
        cli.cli(main, flags={"resume": False}, argv=[arg])
    assert e.value.code == 2
    message = capsys.readouterr().err
    assert message.startswith(prefix) and message.count("\n") == 1
    for w in words:
        assert w in message


# ----------------------------------------------------------------------------------------------
# settings.py edited by hand: types and names come from the declaration (_TYPES), not from the value


def run_with_edited_settings(tmp_path, old: str, new: str, argv: list[str]):
    """Run the command line with a copy of settings.py in which `old` is replaced by `new`."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    text = open(os.path.join(ROOT, "settings.py"), encoding="utf-8").read()
    assert old in text
    (tmp_path / "settings.py").write_text(text.replace(old, new, 1), encoding="utf-8")
    code = (f"import sys; sys.path[:0] = [{str(tmp_path)!r}, {ROOT!r}]; import settings; from semcse import cli; "
            f"cli.cli(lambda: print('resolved', settings.resolved().temperature), argv=sys.argv[1:])")
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=str(tmp_path))


@pytest.mark.parametrize("old, new, message", [
    ("batch_size = 64 ", 'batch_size = "32" ', "error: settings.py: setting 'batch_size' must be int, got str '32'"),
    ('device = "auto" ', "device = None ", "error: settings.py: setting 'device' must be str, got NoneType None"),
    ("max_steps = 50 ", "max_steps = 2.5 ", "error: settings.py: setting 'max_steps' must be int, got float 2.5"),
    ("batch_size = 64 ", "batch_sise = 32 ", "error: settings.py: 'batch_sise' is not a setting (did you mean "
                                             "'batch_size'?); a new one is declared in _TYPES"),
])
def test_a_wrong_type_or_name_edited_into_settings_py_is_one_line(tmp_path, old, new, message):
    done = run_with_edited_settings(tmp_path, old, new, [])
    assert done.returncode == 2 and done.stderr == message + "\n", done.stderr[-2000:]
    helped = run_with_edited_settings(tmp_path, old, new, ["--help"])  # --help still shows every setting
    assert "--batch_size=" in helped.stdout and "--encode_batch_size=64" in helped.stdout
    assert helped.returncode == 2 and helped.stderr == message + "\n", helped.stderr[-2000:]


def test_an_int_edited_into_a_float_setting_keeps_it_a_float(tmp_path):
    done = run_with_edited_settings(tmp_path, "temperature = 0.0 ", "temperature = 0 ", ["--temperature=0.05"])
    assert done.returncode == 0 and done.stdout == "resolved 0.05\n", done.stderr[-2000:]
    done = run_with_edited_settings(tmp_path, "temperature = 0.0 ", "temperature = 0 ", [])
    assert done.stdout == "resolved 0.0\n"


def test_the_declaration_covers_every_setting_and_nothing_else():
    values = {k for k, v in vars(settings).items()
              if k.islower() and not k.startswith("_") and isinstance(v, (bool, int, float, str))}
    assert values == set(settings._TYPES)
    assert all(type(settings._DEFAULTS[k]) is t or (t is float and type(settings._DEFAULTS[k]) is int)
               for k, t in settings._TYPES.items())


@pytest.mark.parametrize("arg, words", [
    ("--output_dir=", ["output_dir", "not empty"]),
    ("--llm_concurrency=100000", ["llm_concurrency", "between 1 and 256", "100000"]),
])
def test_an_empty_output_dir_and_a_huge_concurrency_are_refused(arg, words, capsys):
    assert_one_line_exit_2(lambda resume: pytest.fail("ran with a bad setting"), arg, words, "error: setting ", capsys)
