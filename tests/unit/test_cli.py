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


def test_serve_schedule_is_0200_in_the_given_timezone():
    from recsys.cli import build_serve_schedule

    schedule = build_serve_schedule("0 2 * * *", "Europe/Berlin")
    assert (schedule.cron, schedule.timezone) == ("0 2 * * *", "Europe/Berlin")


def test_deployment_file_declares_schedule_and_trigger():
    from pathlib import Path

    import yaml

    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "deployments" / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in spec["deployments"]}
    assert by_name["nightly"]["schedules"][0]["cron"] == "0 2 * * *"
    trigger = by_name["train-and-publish"]["triggers"][0]
    assert trigger["expect"] == ["prefect.flow-run.Completed"]
    assert trigger["match_related"]["prefect.resource.name"] == "ingest"
    assert "flow_run.parameters['home']" in trigger["parameters"]["home"]["template"]
