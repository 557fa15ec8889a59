"""Inputs that must never turn into a wrong stem behind an ok row or a lost row: manifests with a
byte-order mark, missing columns or broken lines; PCM files cut short; track ids that collide
with OUT's own files or with each other; reference stems of another length than the track."""

import fnmatch
import itertools
import json
import os

import numpy as np
import pytest
import soundfile

from stembeam.model import evaluation
from stembeam.model.config import ModelConfig
from stembeam.transforms import decode
from stembeam.transforms.catalog import MAX_TRACK_ID_CHARS, list_catalog
from stembeam.transforms.evaluate import evaluate_track
from stembeam.transforms.records import Track
from stembeam.transforms.results import sql_tables
from stembeam.transforms.results_schema import RESULT_COLUMNS, column_names
from tests.audio_files import tone, write

CFG = ModelConfig(name="tiny", stems=("vocals", "accompaniment"), T=64, F=64)


# --- manifests ---------------------------------------------------------------------------------


def test_csv_with_byte_order_mark_and_crlf_keeps_its_track_id_column(tmp_path):
    (tmp_path / "cat.csv").write_bytes(
        b"\xef\xbb\xbftrack_id,uri,vocals\r\nt1,a/one.wav,refs/v1.wav\r\nt2,two.wav,\r\n"
    )
    tracks = list_catalog(str(tmp_path / "cat.csv"))
    assert [(t.track_id, t.uri) for t in tracks] == [
        ("t1", str(tmp_path / "a" / "one.wav")),
        ("t2", str(tmp_path / "two.wav")),
    ]
    assert tracks[0].references == (("vocals", str(tmp_path / "refs" / "v1.wav")),)
    assert tracks[1].references == ()


def test_jsonl_with_byte_order_mark_crlf_and_raw_line_separator(tmp_path):
    lines = [
        json.dumps({"track_id": "k", "uri": "y.wav"}),
        json.dumps({"uri": "z.flac"}),
        json.dumps({"track_id": "a\u2028b", "uri": "w.wav"}, ensure_ascii=False),
    ]
    (tmp_path / "cat.jsonl").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    tracks = list_catalog(str(tmp_path / "cat.jsonl"))
    assert [(t.track_id, t.uri) for t in tracks] == [
        ("k", str(tmp_path / "y.wav")),
        ("z", str(tmp_path / "z.flac")),
        ("a_b", str(tmp_path / "w.wav")),
    ]


@pytest.mark.parametrize(
    "name,content,problem",
    [
        (
            "cat.csv",
            "track_id,file\nx,x.wav\n",
            r"line 1: no 'uri' column \(columns: track_id, file\)",
        ),
        ("cat.csv", "", r"the manifest is empty"),
        ("cat.csv", "track_id,uri\n", r"the manifest is empty"),
        ("cat.csv", "track_id,uri\nx,x.wav,extra\n", r"line 2: 3 fields, the header has 2"),
        ("cat.jsonl", '{"uri": "a.wav"}\n{"uri": "b.wav",\n', r"line 2: not JSON"),
        ("cat.jsonl", '{"uri": "a.wav"}\n["b.wav"]\n', r"line 2: not a JSON object"),
        ("cat.jsonl", '{"uri": "a.wav"}\n\n{"track_id": "b"}\n', r"line 3: no 'uri'"),
        ("cat.jsonl", "\n  \n", r"the manifest is empty"),
        ("cat.csv", b"track_id,uri\n\xff\xfe,x.wav\n", r"line 2: not UTF-8"),
    ],
)
def test_broken_manifests_fail_with_one_line_naming_file_and_line(tmp_path, name, content, problem):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ValueError, match=problem) as error:
        list_catalog(str(path))
    message = str(error.value)
    assert message.startswith(str(path)) and "\n" not in message


# --- track ids -----------------------------------------------------------------------------------

RESERVED = (
    "results.sqlite",
    "results.sqlite-journal",
    "results.sqlite-wal",
    "results.sqlite-shm",
    "report.html",
    "report_media",
    "reports",
    ".stembeam",
)


def manifest(tmp_path, rows, name="cat.jsonl"):
    path = tmp_path / name
    lines = (json.dumps(dict(zip(("track_id", "uri"), r, strict=False))) + "\n" for r in rows)
    path.write_text("".join(lines))
    return str(path)


def is_reserved(track_id: str) -> bool:
    top = track_id.split("/")[0]
    return top in RESERVED or fnmatch.fnmatch(top, "report-p*.html")


def test_ids_never_name_files_of_the_output_root(tmp_path):
    names = list(RESERVED) + [
        "report-p2.html",
        "report-p17.html",
        "report_media/clip",
        "results.sqlite/x",
        "report",
        "results",
    ]
    rows = [(name, f"/music/{i}.wav") for i, name in enumerate(names)]
    ids = [t.track_id for t in list_catalog(manifest(tmp_path, rows))]
    assert not [i for i in ids if is_reserved(i)]
    assert len(set(ids)) == len(ids)
    assert ids[names.index("report")] == "report" and ids[names.index("results")] == "results"


def no_id_is_a_folder_of_another(ids):
    return not [(a, b) for a in ids for b in ids if b.startswith(a + "/")]


def test_no_id_is_a_path_prefix_of_another_whatever_the_order(tmp_path):
    rows = [
        ("x", "/m/x.wav"),
        ("x/vocals.wav", "/m/x-vocals.wav"),
        ("x/vocals.wav/deep", "/m/deep.wav"),
        ("x_", "/m/x_.wav"),
        ("y/z", "/m/yz.wav"),
    ]
    mappings = []
    for n, order in enumerate(itertools.permutations(rows)):
        tracks = list_catalog(manifest(tmp_path, order, f"cat{n}.jsonl"))
        ids = [t.track_id for t in tracks]
        assert len(set(ids)) == len(ids) and no_id_is_a_folder_of_another(ids)
        mappings.append({t.uri: t.track_id for t in tracks})
    assert all(m == mappings[0] for m in mappings)
    assert mappings[0]["/m/x.wav"] == "x" and mappings[0]["/m/yz.wav"] == "y/z"


def test_repeated_ids_are_numbered_in_uri_order_not_listing_order(tmp_path):
    rows = [("t", "/m/c.wav"), ("t", "/m/a.wav"), ("t", "/m/b.wav")]
    for n, order in enumerate(itertools.permutations(rows)):
        tracks = list_catalog(manifest(tmp_path, order, f"cat{n}.jsonl"))
        assert {t.uri: t.track_id for t in tracks} == {
            "/m/a.wav": "t",
            "/m/b.wav": "t~2",
            "/m/c.wav": "t~3",
        }
        assert [t.uri for t in tracks] == [uri for _, uri in order]  # listing order kept


def test_long_ids_are_capped_and_stay_unique(tmp_path):
    stem = "a" * 300
    rows = [
        (stem + "1", "/m/1.wav"),
        (stem + "2", "/m/2.wav"),
        ("d/" + "é" * 180, "/m/3.wav"),
        ("short", "/m/4.wav"),
    ]
    ids = [t.track_id for t in list_catalog(manifest(tmp_path, rows))]
    assert len(set(ids)) == 4 and ids[3] == "short"
    key_length = sql_tables()[0].c.track_id.type.length
    assert MAX_TRACK_ID_CHARS <= key_length
    for track_id in ids:
        assert len(track_id) <= MAX_TRACK_ID_CHARS
        assert all(len(part.encode()) <= 255 - 40 for part in track_id.split("/"))  # + stem file
    assert ids[0].startswith("a" * 100) and ids[2].startswith("d/éé")
    folder = tmp_path / "out" / ids[2]
    folder.mkdir(parents=True)  # the filesystem accepts every component
    (folder / ".vocals.flac.partial-0123456789ab").write_bytes(b"")


# --- truncated PCM files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt,subtype,width",
    [("WAV", "PCM_16", 2), ("AIFF", "PCM_24", 3), ("RF64", "FLOAT", 4), ("W64", "PCM_16", 2)],
)
def test_pcm_file_cut_short_fails_with_both_lengths(tmp_path, fmt, subtype, width):
    path = str(tmp_path / f"a.{fmt.lower()}")
    frames, bytes_per_frame = 8000, 2 * width
    soundfile.write(path, tone(frames / 8000, rate=8000), 8000, format=fmt, subtype=subtype)
    size = os.path.getsize(path)
    header = size - frames * bytes_per_frame  # libsndfile writes the sample data last
    cut = size - 3001
    with open(path, "r+b") as f:
        f.truncate(cut)
    present = (cut - header) // bytes_per_frame
    with pytest.raises(
        decode.DecodeError,
        match=f"^the file is truncated: its header states {frames} samples but "
        f"only {present} are present$",
    ):
        decode.decode_segments(path, CFG, "overlap")


def test_complete_wav_with_trailing_chunks_is_ok(tmp_path):
    path = str(tmp_path / "a.wav")
    wave = tone(0.5, rate=8000)
    write(path, wave, 8000, subtype="PCM_16")
    junk = (
        b"LIST"
        + (10).to_bytes(4, "little")
        + b"INFOjunk!!"
        + b"id3 "
        + (3).to_bytes(4, "little")
        + b"abc\x00"
    )
    with open(path, "r+b") as f:
        f.seek(0, 2)
        f.write(junk)
        size = f.tell()
        f.seek(4)
        f.write((size - 8).to_bytes(4, "little"))
    info, segments = decode.decode_segments(path, CFG, "overlap")
    segments = list(segments)
    assert info.num_samples == len(wave) and segments[-1][2] == info


# --- reference stems of another length -----------------------------------------------------------


def evaluated(tmp_path, track_s: float, reference_s: float, rate: int = 8000):
    """evaluate_track on a 2-stem track of ``track_s`` seconds whose vocals reference lasts
    ``reference_s`` seconds; returns the row and the (N, 2) estimates and references."""
    n = int(round(track_s * rate))
    estimates = [tone(track_s, rate, seed=1), tone(track_s, rate, seed=2)]
    vocals = 0.2 * tone(reference_s, rate, seed=3)
    k = min(n, len(vocals))
    vocals[:k] += estimates[0][:k]
    refs = [vocals, 0.8 * estimates[1] + 0.1 * tone(track_s, rate, seed=4)]
    stems, references = {}, []
    for name, est, ref in zip(CFG.stems, estimates, refs, strict=True):
        stems[name] = write(str(tmp_path / "out" / "t" / f"{name}.wav"), est, rate, "FLOAT")
        references.append((name, write(str(tmp_path / "refs" / f"{name}.wav"), ref, rate, "FLOAT")))
    row = dict.fromkeys(column_names(RESULT_COLUMNS))
    row.update(track_id="t", status="ok", stems=json.dumps(stems))
    track = Track("t", "/m/t.wav", tuple(references))
    return evaluate_track(track, row, str(tmp_path / "out")), estimates, refs


def test_reference_of_another_length_leaves_metrics_null_and_says_why(tmp_path):
    row, _, _ = evaluated(tmp_path, track_s=4.0, reference_s=3.0)
    assert row["error"] == "reference vocals is 3.00 s, the track 4.00 s: metrics not computed"
    assert row["status"] == "ok"
    assert all(row[f"{m}_{s}"] is None for m in ("sdr", "sir", "sar", "isr") for s in CFG.stems)
    assert not (tmp_path / "out" / "t" / "museval.json").exists()


def test_reference_within_tolerance_is_cropped_and_scored(tmp_path):
    row, estimates, refs = evaluated(tmp_path, track_s=3.0, reference_s=3.0 + 5 / 8000)
    n = len(estimates[0])
    scores = evaluation.evaluate(
        np.stack([r[:n] for r in refs]), np.stack(estimates), win=8000, hop=8000
    )
    medians = evaluation.median_metrics(scores)
    assert not row["error"]
    for metric, values in medians.items():
        for name, value in zip(CFG.stems, values, strict=True):
            assert row[f"{metric}_{name}"] == pytest.approx(float(value), abs=1e-4)
