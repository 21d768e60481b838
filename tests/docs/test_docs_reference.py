"""The reference pages (docs/reference/*.md) are what docs/gen_reference.py makes of the
code now: a setting, flag, metric or event added or changed without regenerating fails
here, naming the command that brings them up to date."""

import importlib.util
import os

from tests.harness import ROOT


def generator():
    path = os.path.join(ROOT, "docs", "gen_reference.py")
    spec = importlib.util.spec_from_file_location("gen_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reference_is_current(monkeypatch):
    gen = generator()
    monkeypatch.setenv("COLUMNS", "100")
    pages = gen.render()
    stale = gen.stale(pages)
    assert not stale, (f"{', '.join(stale)} not current with the code: run "
                       f"`.venv/bin/python docs/gen_reference.py` and commit the result")


def test_every_setting_flag_metric_and_event_is_in_the_reference():
    import fastfork
    from fastfork.cli import aliases
    from fastfork.operations import metrics
    from fastfork.settings import FIELDS

    pages = generator().render()
    for name, field in FIELDS.items():
        assert f"\n### {name.replace('_', '-')}\n" in pages["settings.md"], name
    for flags in aliases.ALIASES.values():
        for flag in flags:
            assert f"`{flag}" in pages["settings.md"] and f"`{flag}" in pages["cli.md"], flag
    with open(metrics.__file__) as f:
        source = f.read()
    for family in ("fastfork_connections_accepted_total", "fastfork_worker_restarts_total",
                   "fastfork_dispatch_batch_size", "fastfork_worker_requests_total"):
        assert family.removesuffix("_total") in source
        assert f"`{family}`" in pages["metrics.md"], family
    for event in fastfork.EVENTS:
        assert f"| `{event}` |" in pages["events.md"], event


def test_check_mode_names_the_command(tmp_path, monkeypatch, capsys):
    gen = generator()
    monkeypatch.setattr(gen, "OUT", str(tmp_path))      # an empty folder: nothing current
    assert gen.main(["--check"]) == 1
    assert "run: python docs/gen_reference.py" in capsys.readouterr().err
