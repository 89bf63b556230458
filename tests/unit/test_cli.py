"""The console script as a user meets it: exit codes, messages, and no traceback for user errors."""

import yaml
from helpers import assert_user_error, embedforge
from typer.testing import CliRunner

from embedforge.cli import app


def test_help_lists_every_stage_with_its_purpose():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("download", "validate", "run", "params"):
        assert command in result.output
    assert "Great Expectations" in result.output


def test_global_and_per_command_overrides_combine(project):
    result = CliRunner().invoke(app, ["--set", "download.limit=9", "params", "--set", "train.lr=0.5"])
    resolved = yaml.safe_load(result.output)
    assert resolved["download"]["limit"] == 9 and resolved["train"]["lr"] == 0.5


def test_negative_limit_exits_non_zero_naming_the_key(project):
    done = embedforge("download", "--set", "download.limit=-5", cwd=project)
    assert_user_error(done, "download.limit: must be > 0, got -5")
    assert not (project / "data").exists()


def test_unknown_key_in_params_file_exits_non_zero_naming_the_key(project):
    tree = yaml.safe_load((project / "params.yaml").read_text())
    tree["validate"]["max_char"] = 10
    (project / "params.yaml").write_text(yaml.safe_dump(tree))
    done = embedforge("validate", cwd=project)
    assert_user_error(done, "params.yaml", "validate.max_char: unknown key")


def test_a_renamed_key_exits_non_zero_with_one_line_naming_the_new_key(project):
    done = embedforge("params", "--set", "train.stsb_min_score=3.5", cwd=project)
    assert_user_error(done, "train.stsb_min_score was renamed train.similar_min_score")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_run_set_writes_params_yaml_keeping_comments_and_refuses_bad_values_untouched(project):
    before = (project / "params.yaml").read_text()
    done = embedforge("run", "--set", "model.kind=cube", cwd=project)
    assert_user_error(done, "model.kind: input should be 'encoder', 'dynamic', 'lattice' or 'static'")
    assert (project / "params.yaml").read_text() == before

    from embedforge.config import write_overrides

    write_overrides(
        project / "params.yaml", ["model.kind=lattice", "model.lattice.size=[4, 4, 4]", "model.lattice.mode=null"]
    )
    after = (project / "params.yaml").read_text()
    model = yaml.safe_load(after)["model"]
    assert model["kind"] == "lattice" and model["lattice"]["size"] == [4, 4, 4] and model["lattice"]["mode"] is None
    assert "# the student family" in after and after.count("\n") >= before.count("\n")
