"""bench.gpu's CPU path on 5 s of real music, so the GPU benchmark works the first time a GPU is
there: catalog, fresh `stembeam separate` processes in both precisions, the check against a
CPU run, the figures it prints."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from bench.gpu import SONG_FOLDERS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cpu_path_on_five_seconds(tiny_model, tmp_path):
    pytest.importorskip("stempeg")
    if not glob.glob(SONG_FOLDERS):
        pytest.skip("fretsonfire-songs-muldjord is not installed")
    cache, keep, rows_path = tmp_path / "cache", tmp_path / "keep", tmp_path / "rows.json"
    env = {**os.environ, "PYTHONPATH": ROOT, "STEMBEAM_CACHE": str(cache)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.gpu",
            "--cpu",
            "--seconds",
            "5",
            "--models",
            tiny_model,
            "--precisions",
            "float32",
            "bfloat16",
            "--spectral-paths",
            "graph",
            "--json",
            str(rows_path),
            "--keep",
            str(keep),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (catalog_file,) = glob.glob(str(cache / "bench" / "gpu-catalog-5s" / "*.flac"))
    mixture, rate = sf.read(catalog_file, dtype="float64")
    assert rate == 44100 and mixture.shape == (5 * 44100, 2) and np.abs(mixture).max() > 0.01
    rows = json.loads(rows_path.read_text())
    assert [r["precision"] for r in rows] == ["float32", "bfloat16"]
    for row in rows:
        assert row["audio_s"] == pytest.approx(5.0)
        assert row["rtf"] == pytest.approx(5.0 / row["wall_s"])
        assert row["unet_batches"] >= 1 and row["load_s"] > 0 and row["peak_rss_gb"] > 0.1
        assert row["summary"]["tracks_ok"] == 1
        assert row["spectral_path"] == "graph"
        tag = f"tiny-{row['precision']}-graph"
        stems = sorted(glob.glob(str(keep / tag / "**" / "*.wav"), recursive=True))
        cpu = sorted(glob.glob(str(keep / f"{tag}-cpu" / "**" / "*.wav"), recursive=True))
        assert [os.path.basename(s) for s in stems] == ["accompaniment.wav", "vocals.wav"]
        audio = [sf.read(s, dtype="float64")[0] for s in stems]
        # the default residual sharing makes the stems sum to the mixture
        np.testing.assert_allclose(sum(audio), mixture, atol=2e-4)
        worst = min(
            10 * np.log10(np.sum(b**2) / max(np.sum((a - b) ** 2), 1e-300))
            for a, b in zip(audio, (sf.read(c, dtype="float64")[0] for c in cpu), strict=True)
        )
        assert worst >= 60 and row["snr_vs_cpu_db"] >= 60
        assert f"{row['precision']} graph: 5 s of audio" in proc.stdout
