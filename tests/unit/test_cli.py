"""The CLI's own logic (commands that run flows are covered in tests/flows)."""

from __future__ import annotations

from recsys.cli import build_parser, main


def test_generate_command_writes_three_files(tmp_path, capsys):
    assert main(["generate", "--out", str(tmp_path), "--users", "20", "--items", "15",
                 "--interactions", "200", "--seed", "1"]) == 0
    assert {p.name for p in tmp_path.iterdir()} >= {"users.csv", "items.csv", "interactions.csv"}
    assert "interactions.csv" in capsys.readouterr().out


def test_bad_mapping_exits_2_with_message(tmp_path, capsys):
    assert main(["ingest", "--source", "csv", "--path", str(tmp_path), "--mapping", str(tmp_path / "no.toml")]) == 2
    assert "mapping file" in capsys.readouterr().err


def test_every_command_has_help():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001
    for name, sub in commands.items():
        assert sub.format_help(), name
