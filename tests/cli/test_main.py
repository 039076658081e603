from cli.main import main


def test_version_prints_and_exits_zero(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith("radlens ")


def test_unknown_command_exits_2(capsys):
    assert main(["no-such-command"]) == 2
