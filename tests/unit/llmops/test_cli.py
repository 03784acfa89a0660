"""The umbrella CLI: --help for every subcommand, fast, and user errors as exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llmops.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[3]
LLMOPS = [sys.executable, "-m", "llmops"]


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, cwd=kw.pop("cwd", REPO), **kw)


HEAVY = ("torch", "vllm", "mlflow", "qdrant_client", "ragas", "litellm", "transformers", "sklearn", "pandas")


def test_top_level_help_lists_every_module_without_heavy_imports():
    # `llmops --help` stays fast because no heavy library is imported for it (how long it takes on this
    # machine is a benchmark figure, not a test)
    probe = ("import sys; from llmops.cli import main; code = main(['--help']); "
             f"print('HEAVY', sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    out = run([sys.executable, "-c", probe])
    assert out.returncode == 0, out.stderr
    for name in ("finetune", "serve", "rag", "guardrails", "eval", "classic", "drift", "assets"):
        assert name in out.stdout
    assert "HEAVY []" in out.stdout, out.stdout[-500:]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage: llmops " + command in capsys.readouterr().out


@pytest.mark.parametrize("package", ["finetune", "serving", "rag", "guardrails", "eval", "classic_ml"])
def test_python_dash_m_entry_points(package):
    out = run([sys.executable, "-m", package, "--help"])
    assert out.returncode == 0 and "usage:" in out.stdout


def test_unknown_command_and_no_command():
    assert run([*LLMOPS, "bogus"]).returncode == 2
    assert run(LLMOPS).returncode == 2


def test_bad_config_is_one_screen_exit_2(tmp_path):
    bad = tmp_path / "assets.yaml"
    bad.write_text("models_dir: models\ntiny:\n  layers: many\n  colour: red\n")
    out = run([*LLMOPS, "assets", "verify", "--config", str(bad)])
    assert out.returncode == 2
    assert "line 3, tiny.layers" in out.stderr and "line 4, tiny.colour: unknown key" in out.stderr
    assert "Traceback" not in out.stderr


def test_assets_verify_cli(base_model_dir):
    out = run([*LLMOPS, "assets", "verify"])
    assert out.returncode == 0, out.stderr
    assert "smollm2-135m-instruct" in out.stdout


@pytest.mark.integration
@pytest.mark.slow
def test_registry_cli_round_trip(tmp_path):
    env_cfg = tmp_path / "registry.yaml"
    env_cfg.write_text(f"# Used by: test\nroot: {tmp_path / 'mlruns'}\n")
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    from llmops.registry import Registry, RegistryConfig

    Registry(RegistryConfig(root=str(tmp_path / "mlruns"))).register("cli-model", model, kind="base_model")
    base = [*LLMOPS, "registry", "--config", str(env_cfg)]
    out = run([*base, "alias", "cli-model", "champion", "1", "--reason", "test"])
    assert out.returncode == 0, out.stderr
    assert "None -> 1" in out.stdout
    assert run([*base, "resolve", "cli-model@champion"]).stdout.strip().endswith("/m")
    assert "champion" in run([*base, "versions", "cli-model"]).stdout
    assert "test" in run([*base, "audit", "cli-model"]).stdout
    bad = run([*base, "resolve", "cli-model@nope"])
    assert bad.returncode == 2 and "is not set" in bad.stderr


def test_a_user_error_exits_2_with_the_fix():
    out = run([*LLMOPS, "eval", "run", "--config", "configs/eval/nope.yaml"])
    assert out.returncode == 2 and "nope.yaml" in out.stderr and "Traceback" not in out.stderr
