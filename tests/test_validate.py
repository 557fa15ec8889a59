"""Launcher checks: a bad results URL, an unwritable output or an empty or broken catalog stops
``stembeam separate`` with one line before the pipeline is built; passwords never show."""

import os
import socket
import time

import pytest
import sqlalchemy as sa
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from stembeam.pipeline.separate import run
from stembeam.pipeline.validate import check_catalog, check_output, check_results, redact_url
from stembeam.transforms.results_schema import RESULT_COLUMNS, column_names
from tests.audio_files import tone, write
from tests.services import free_port


@pytest.mark.parametrize(
    "url,shown",
    [
        ("postgresql://user:secret@db.example/stems", "postgresql://user:***@db.example/stems"),
        (
            "postgresql+psycopg2://u:p@ss/w@host:5432/db?sslmode=require",
            "postgresql+psycopg2://u:***@host:5432/db?sslmode=require",
        ),
        ("mysql://u:pw@h/db", "mysql://u:***@h/db"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("sqlite:////out/results.sqlite", "sqlite:////out/results.sqlite"),
        ("bigquery:proj.ds.table", "bigquery:proj.ds.table"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def one_line_error(call, *args, match: str) -> str:
    with pytest.raises(ValueError, match=match) as error:
        call(*args)
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "url,match",
    [
        (
            "sqlit:///x.sqlite",
            r"^unknown database scheme 'sqlit' in sqlit:///x.sqlite; use sqlite:",
        ),
        ("not a url", r"is not a database URL"),
        ("bigquery:proj.table", r"is not bigquery:PROJECT.DATASET.TABLE"),
    ],
)
def test_results_url_syntax(url, match):
    one_line_error(check_results, url, match=match)


def test_bigquery_url_is_only_checked_for_syntax():
    check_results("bigquery:my-project.stems.results")  # no network: nothing to reach here


def test_unreachable_postgresql_fails_fast_without_the_password():
    url = f"postgresql://user:s3cret@127.0.0.1:{free_port()}/db"
    started = time.monotonic()
    message = one_line_error(check_results, url, match="connection refused")
    assert message == (
        f"cannot connect to postgresql://user:***@127.0.0.1:"
        f"{url.rsplit(':', 1)[1].split('/')[0]}/db: connection refused"
    )
    assert "s3cret" not in message and time.monotonic() - started < 5


def test_silent_server_times_out():
    with socket.socket() as server:  # accepts TCP connections, never answers
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        started = time.monotonic()
        message = one_line_error(
            check_results,
            f"postgresql://u:pw@127.0.0.1:{port}/db",
            2,
            match=r"^cannot connect to postgresql://u:\*\*\*@",
        )
    assert "timeout" in message and 1.5 < time.monotonic() - started < 10


def test_sqlite_in_a_missing_folder_is_created(tmp_path):
    import sqlite3

    check_results(f"sqlite:///{tmp_path}/new/results.sqlite")
    tables = sqlite3.connect(tmp_path / "new" / "results.sqlite").execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'"
    )
    assert sorted(name for (name,) in tables) == ["results", "runs"]


def test_sqlite_where_no_folder_can_be_made(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    one_line_error(
        check_results,
        f"sqlite:///{tmp_path}/file/results.sqlite",
        match="^cannot connect to sqlite:///.*file/results.sqlite: ",
    )


def test_postgresql_tables_are_created_and_checked(postgres_db):
    check_results(postgres_db)
    engine = sa.create_engine(postgres_db)
    try:
        inspector = sa.inspect(engine)
        assert {c["name"] for c in inspector.get_columns("results")} == set(
            column_names(RESULT_COLUMNS)
        )
        with engine.begin() as connection:
            connection.execute(sa.text("alter table results drop column sdr_vocals"))
    finally:
        engine.dispose()
    one_line_error(
        check_results, postgres_db, match="the table results in .* lacks the columns sdr_vocals;"
    )


def test_output_is_probed_and_left_clean(tmp_path):
    check_output(str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out") == []
    (tmp_path / "file").write_text("x")
    one_line_error(
        check_output,
        str(tmp_path / "file" / "out"),
        match=f"^the output {tmp_path}/file/out is not writable: ",
    )


def test_remote_output(s3_emulator):
    FileSystems.set_options(PipelineOptions([]))  # what validate_run does for the launcher
    bucket = s3_emulator.bucket()
    check_output(f"{bucket}/out")
    assert s3_emulator.client().list_objects_v2(Bucket=bucket[5:]).get("KeyCount") == 0
    one_line_error(check_output, "s3://no-such-bucket-here/out", match="is not writable")


def test_catalog(tmp_path):
    write(str(tmp_path / "m" / "a.wav"), tone(0.1, 8000), 8000)
    write(str(tmp_path / "m" / "sub" / "b.flac"), tone(0.1, 8000), 8000)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("x")
    assert check_catalog(str(tmp_path / "m")) == 2
    assert check_catalog(str(tmp_path / "m" / "**.wav")) == 1
    one_line_error(
        check_catalog,
        str(tmp_path / "m" / "*.mp3"),
        match=r"^the catalog .*\*\.mp3 matched no audio files$",
    )
    one_line_error(check_catalog, str(tmp_path / "docs"), match="matched no audio files")
    (tmp_path / "cat.csv").write_text("id,path\na,m/a.wav\n")
    one_line_error(check_catalog, str(tmp_path / "cat.csv"), match="line 1: no 'uri' column")


def test_separate_refuses_a_bad_run_before_building(tmp_path):
    write(str(tmp_path / "m" / "a.wav"), tone(0.1, 8000), 8000)
    base = [
        "--input",
        str(tmp_path / "m"),
        "--output",
        str(tmp_path / "out"),
        "--model",
        str(tmp_path / "no-model-needed"),
    ]
    with pytest.raises(ValueError, match="^unknown database scheme 'sqlit'"):
        run(base + ["--results", "sqlit:///r.sqlite"])
    with pytest.raises(ValueError, match="matched no audio files"):
        run(["--input", str(tmp_path / "m" / "*.flac")] + base[2:])


def test_graph_spectral_path_with_wiener_is_refused(tmp_path, tiny_model):
    write(str(tmp_path / "m" / "a.wav"), tone(0.1, 8000), 8000)
    argv = ["--input", str(tmp_path / "m"), "--output", str(tmp_path / "out")]
    argv += ["--model", tiny_model, "--postprocess", "wiener", "--spectral_path", "graph"]
    with pytest.raises(ValueError, match="--spectral_path graph needs --postprocess ratio"):
        run(argv)
    assert not os.path.exists(tmp_path / "out" / "a")
