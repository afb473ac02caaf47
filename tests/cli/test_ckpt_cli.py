"""``torchdoctor ckpt`` through the CLI: exit codes, JSON contract, one-line errors."""

import json

import torch
from fixtures import ckpt_builders as build
from fixtures.models import TiedLM
from tests.conftest import run_torchdoctor


def test_inspect_json_is_schema_valid_and_exit_code_follows_findings(cli, tmp_path, validate_report):
    ok = cli("ckpt", "inspect", str(build.dataparallel_state_dict(tmp_path)), "--json")
    assert ok.exit_code == 0
    report = validate_report(json.loads(ok.stdout))
    assert report["command"] == "ckpt inspect" and report["findings"][0]["id"] == "module-prefix"
    strict = cli("ckpt", "inspect", str(build.dataparallel_state_dict(tmp_path)), "--strict")
    assert strict.exit_code == 1
    bad = cli("ckpt", "inspect", str(build.lfs_pointer(tmp_path)))
    assert bad.exit_code == 1 and "git lfs pull" in bad.stdout


def test_inspect_human_groups(cli, tmp_path):
    result = cli("ckpt", "inspect", str(build.lightning_style(tmp_path)))
    assert "[!] Structure: weights at checkpoint['state_dict'] (lightning)" in result.stdout
    assert "[✓] Pickle safety:" in result.stdout


def test_inspect_with_a_model_spec(cli, tmp_path, repo_root):
    spec = f"{repo_root / 'fixtures' / 'models.py'}:TinyConvNet"
    result = cli("ckpt", "inspect", str(build.dataparallel_state_dict(tmp_path)), "--model", spec, "--json")
    report = json.loads(result.stdout)
    assert report["result"]["model"]["training_step"]["ok"] is True


def test_inspect_a_language_model_with_an_input_shape(cli, tmp_path, repo_root):
    source = tmp_path / "lm.pt"
    torch.save(TiedLM().state_dict(), source)  # Embedding first: --input-shape 3,5 is token ids
    spec = f"{repo_root / 'fixtures' / 'models.py'}:TiedLM"
    result = cli("ckpt", "inspect", str(source), "--model", spec, "--input-shape", "3,5", "--json")
    step = json.loads(result.stdout)["result"]["model"]["training_step"]
    assert step["ok"] is True and step["input_shapes"] == [[3, 5]], step


def test_bad_inputs_exit_2_with_one_line(tmp_path):
    missing = run_torchdoctor("ckpt", "inspect", str(tmp_path / "nope.pt"))
    assert missing.returncode == 2 and missing.stderr.count("\n") <= 2 and "Traceback" not in missing.stderr
    broken_model = tmp_path / "broken.py"
    broken_model.write_text("import torch\nraise RuntimeError('no weights here')\n")
    spec = run_torchdoctor("ckpt", "inspect", str(build.plain_state_dict(tmp_path)), "--model", f"{broken_model}:Net")
    assert spec.returncode == 2 and "broken.py:2: RuntimeError: no weights here" in spec.stderr
    shape = run_torchdoctor("ckpt", "inspect", str(build.plain_state_dict(tmp_path)), "--model",
                            f"{broken_model}:Net", "--input-shape", "1,x")
    assert shape.returncode == 2 and "Traceback" not in shape.stderr


def test_diff_cli(cli, tmp_path):
    (tmp_path / "a").mkdir()
    result = cli("ckpt", "diff", str(build.plain_state_dict(tmp_path / "a")),
                 str(build.dataparallel_state_dict(tmp_path)), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["result"]["identical"] is True
