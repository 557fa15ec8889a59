"""Catalog listing (globs, manifests, MUSDB-style folders), safe ids, storage helpers."""

import json
import os

import pytest

from stembeam.transforms import storage
from stembeam.transforms.catalog import check_source, list_catalog, safe_track_id


@pytest.mark.parametrize(
    "raw,safe",
    [
        ("artist/album/01 song", "artist/album/01 song"),
        ("../../etc/passwd", "__/__/etc/passwd"),
        ("/abs/path", "abs/path"),
        ("a/./b//c", "a/b/c"),
        (".hidden", "_hidden"),
        ("C:\\music\\x", "C_/music/x"),
        ("<script>alert(1)</script>", "_script_alert(1)_/script_"),
    ],
)
def test_safe_track_id(raw, safe):
    got = safe_track_id(raw)
    assert got == safe
    root = "/out"
    assert os.path.normpath(os.path.join(root, got)).startswith(root + "/")


def test_safe_track_id_rejects_nothing_left():
    with pytest.raises(ValueError):
        safe_track_id("/./")


def touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()
    return path


def test_glob_ids_are_paths_below_the_fixed_prefix(tmp_path):
    a = touch(str(tmp_path / "m" / "x" / "one.flac"))
    b = touch(str(tmp_path / "m" / "two.flac"))
    touch(str(tmp_path / "m" / "notes.txt"))
    tracks = list_catalog(str(tmp_path / "m" / "**.flac"))
    assert [(t.track_id, t.uri) for t in tracks] == [("two", b), ("x/one", a)]


def test_plain_folder_lists_audio_files(tmp_path):
    touch(str(tmp_path / "a.wav"))
    touch(str(tmp_path / "sub" / "b.m4a"))
    touch(str(tmp_path / "readme.md"))
    assert sorted(t.track_id for t in list_catalog(str(tmp_path))) == ["a", "sub/b"]


def test_musdb_folder(tmp_path):
    for track in ("test/Artist - Song", "train/Other - Tune"):
        for stem in ("mixture", "vocals", "drums", "bass", "other"):
            touch(str(tmp_path / track / f"{stem}.wav"))
    tracks = list_catalog(str(tmp_path))
    assert [t.track_id for t in tracks] == ["test/Artist - Song", "train/Other - Tune"]
    t = tracks[0]
    assert t.uri.endswith("test/Artist - Song/mixture.wav")
    assert [name for name, _ in t.references] == ["bass", "drums", "other", "vocals"]
    assert all(os.path.basename(uri) == f"{name}.wav" for name, uri in t.references)


def test_csv_and_jsonl_manifests(tmp_path):
    (tmp_path / "cat.csv").write_text(
        "track_id,uri,vocals,accompaniment\n"
        "t1,audio/one.wav,refs/v1.wav,refs/a1.wav\n"
        "../evil,/abs/two.wav,,\n"
        "t1,audio/dup.wav,,\n"
    )
    tracks = list_catalog(str(tmp_path / "cat.csv"))
    # repeated ids are numbered in uri order (audio/dup.wav < audio/one.wav), not row order
    assert [t.track_id for t in tracks] == ["t1~2", "__/evil", "t1"]
    assert tracks[0].uri == str(tmp_path / "audio" / "one.wav")
    assert dict(tracks[0].references) == {
        "vocals": str(tmp_path / "refs" / "v1.wav"),
        "accompaniment": str(tmp_path / "refs" / "a1.wav"),
    }
    assert tracks[1].uri == "/abs/two.wav" and tracks[1].references == ()
    lines = [{"uri": "gs://b/x/song.flac"}, {"track_id": "k", "uri": "y.wav", "vocals": "v.wav"}]
    (tmp_path / "cat.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    tracks = list_catalog(str(tmp_path / "cat.jsonl"))
    assert [(t.track_id, t.uri) for t in tracks] == [
        ("song", "gs://b/x/song.flac"),
        ("k", str(tmp_path / "y.wav")),
    ]


def test_atomic_writes_leave_nothing_on_error(tmp_path):
    target = str(tmp_path / "d" / "f.bin")
    with pytest.raises(RuntimeError):
        with storage.atomic_writer(target) as f:
            f.write(b"half")
            raise RuntimeError("killed")
    assert not os.path.exists(target)
    assert os.listdir(tmp_path / "d") == []
    storage.write_atomic(target, b"whole")
    storage.write_atomic(target, b"again")
    assert open(target, "rb").read() == b"again" and os.listdir(tmp_path / "d") == ["f.bin"]
    with storage.local_staging(str(tmp_path / "d" / "g.bin")) as local:
        open(local, "wb").write(b"staged")
        assert not os.path.exists(tmp_path / "d" / "g.bin")
    assert sorted(os.listdir(tmp_path / "d")) == ["f.bin", "g.bin"]
    storage.delete_matching(str(tmp_path / "d" / "*.bin"))
    assert storage.glob(str(tmp_path / "d" / "*")) == []


def test_check_source(tmp_path):
    check_source(str(tmp_path))
    check_source(str(tmp_path / "nothing" / "*.wav"))  # an empty glob is an empty catalog
    with pytest.raises(ValueError, match="does not exist"):
        check_source(str(tmp_path / "missing.csv"))
