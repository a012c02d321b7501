"""The CLI is a thin layer: targets are parsed, settings validated before any connection."""
from __future__ import annotations

import json

import pytest

from hermes_infra import cli, commands


def test_user_at_host_becomes_pyinfra_arguments():
    target = commands.Target("deploy@203.0.113.7", port=2222, key="/k", sudo=True, data={"swap": '{"size": "4G"}'})
    assert target.inventory == "203.0.113.7" and target.user == "deploy"
    args = target.pyinfra_args()
    assert args[:1] == ["203.0.113.7"]
    assert args[1:5] == ["--ssh-user", "deploy", "--ssh-port", "2222"] and "--sudo" in args
    assert target.cli_args()[0] == "deploy@203.0.113.7"
    assert target.override_data()["swap"] == {"size": "4G"}


def test_pyinfra_runs_the_packaged_deploy_with_the_passthrough_arguments():
    from hermes_infra.release.pyinfra_run import PyinfraArgsError, pyinfra_params

    params = pyinfra_params(commands.Target("root@h"), dry=True, extra=["--limit", "web", "-vv", "--serial"])
    assert params["operations"] == (str(commands.DEPLOY_FILE),) and params["inventory"] == "h"
    assert params["dry"] and params["limit"] == ("web",) and params["verbosity"] == 2 and params["serial"]
    assert params["ssh_user"] == "root"
    with pytest.raises(PyinfraArgsError, match="--no-such-option"):
        pyinfra_params(commands.Target("root@h"), dry=False, extra=["--no-such-option"])


def test_invalid_settings_exit_2_before_connecting(capsys):
    code = cli.main(["up", "root@192.0.2.1", "--data", json.dumps({"size": "lots"}).join(["swap=", ""])])
    err = capsys.readouterr().err
    assert code == 2
    assert "swap.size: 'lots' is not a size" in err and "Nothing was changed on any host." in err


def test_validate_reports_every_host_of_an_inventory(capsys, tmp_path, monkeypatch):
    (tmp_path / "group_data").mkdir()
    (tmp_path / "group_data" / "all.py").write_text('swap = {"size": "4G"}\n')
    (tmp_path / "group_data" / "web.py").write_text('gateways = [{"name": "Bad Name"}]\n')
    (tmp_path / "inv.py").write_text('web = [("a", {}), ("b", {})]\ndb = [("c", {})]\n')
    monkeypatch.chdir(tmp_path)
    code = cli.main(["validate", str(tmp_path / "inv.py")])
    err = capsys.readouterr().err
    assert code == 2
    assert "host a:" in err and "host b:" in err and "host c" not in err
    assert "gateways[0].name" in err


def test_group_data_layers_merge_into_valid_settings(tmp_path, monkeypatch):
    (tmp_path / "group_data").mkdir()
    (tmp_path / "group_data" / "all.py").write_text('swap = {"size": "4G", "swappiness": 5}\n')
    (tmp_path / "group_data" / "web.py").write_text('swap = {"size": "1G"}\n')
    (tmp_path / "inv.py").write_text('web = [("a", {"docker": {"install_source": "distro"}})]\n')
    monkeypatch.chdir(tmp_path)
    settings = commands.validate(commands.Target(str(tmp_path / "inv.py"), cwd=str(tmp_path)))["a"]
    assert (settings.swap.size, settings.swap.swappiness) == ("1G", 5)
    assert settings.docker.install_source == "distro"
