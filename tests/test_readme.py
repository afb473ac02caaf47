"""The README's quickstart is a contract: exactly two set-up commands, and CI runs the test one."""

import re


def quickstart_commands(repo_root) -> list[str]:
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_quickstart_has_exactly_two_commands_env_and_tests(repo_root):
    commands = quickstart_commands(repo_root)
    assert len(commands) == 2
    assert commands[0].endswith("torchdoctor env")
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim(repo_root):
    ci = (repo_root / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert quickstart_commands(repo_root)[1] in ci
    assert any("torch==2.13.0" in line for line in ci)


def test_readme_and_pyproject_describe_what_exists_not_plans(repo_root):
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    pyproject = (repo_root / "pyproject.toml").read_text(encoding="utf-8")
    assert "Planned" not in readme and "later issue" not in pyproject
    # the distributed features the README names are real options and modules
    assert "`env --distributed`" in readme and (repo_root / "src/torchdoctor/nan/ranks.py").exists()
    assert "count --compare" in pyproject


def test_readme_documents_explain_exit_codes(repo_root):
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Output and exit codes", 1)[1].split("\n## ", 1)[0]
    assert "`explain` follows the same table" in section and "exits 1 when it" in section
