from radlens.cli.main import main


def test_version_prints_and_exits_zero(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith("radlens ")


def test_unknown_command_exits_2(capsys):
    assert main(["no-such-command"]) == 2


def test_a_mistyped_command_module_is_an_error():
    import pytest

    from radlens.cli.main import _register_commands

    with pytest.raises(ModuleNotFoundError, match=r"cli\.service_cmdz"):
        _register_commands(("radlens.cli.service_cmdz",))
