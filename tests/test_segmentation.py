"""Segment plans and the streaming overlap-add, checked against direct constructions."""

import numpy as np
import pytest

from stembeam.model.segmentation import (
    SEGMENT_QUANTUM,
    SILENCE_FRAMES,
    SegmentPlan,
    StreamingOverlapAdd,
    ola_sample_range,
    plan_segments,
    segment_sample_range,
)


@pytest.mark.parametrize("n_frames", [1, 63, 64, 65, 500, 1024])
@pytest.mark.parametrize(
    "mode,context", [("spleeter", 0), ("overlap", 0), ("overlap", 8), ("overlap", 31)]
)
def test_every_frame_kept_exactly_once(n_frames, mode, context):
    T = 64
    plans = plan_segments(n_frames, T, mode, context)
    kept = np.zeros(n_frames, int)
    for i, p in enumerate(plans):
        assert p.index == i
        assert p.frame_start <= p.keep_start < p.keep_stop <= p.frame_start + T
        kept[p.keep_start : p.keep_stop] += 1
        if mode == "overlap":
            # every kept frame sees `context` frames of the track on both sides (as far as the
            # track goes), and no segment starts before the track or ends after it needlessly
            assert p.keep_start - p.frame_start >= min(context, p.keep_start)
            assert p.frame_start + T - p.keep_stop >= min(context, n_frames - p.keep_stop)
            assert p.frame_start >= 0
            assert p.frame_start + T <= max(n_frames, T)
    assert (kept == 1).all()


def test_spleeter_mode_is_pad_and_partition():
    plans = plan_segments(1100, 512, "spleeter")
    assert [(p.frame_start, p.keep_start, p.keep_stop) for p in plans] == [
        (0, 0, 512),
        (512, 512, 1024),
        (1024, 1024, 1100),
    ]


def test_overlap_plan_hand_example():
    # T=64, context 8: keep [0, 56), then cores of 48 frames; the last segment ends at frame 200
    plans = plan_segments(200, 64, "overlap", 8)
    assert [(p.frame_start, p.keep_start, p.keep_stop) for p in plans] == [
        (0, 0, 56),
        (48, 56, 104),
        (96, 104, 152),
        (136, 152, 200),
    ]
    assert plan_segments(30, 64, "overlap", 8) == [plan_segments(30, 64, "spleeter")[0]]


def test_sample_ranges():
    plan = plan_segments(2000, 512, "overlap", 64)[1]
    start, stop = segment_sample_range(plan, 512)
    assert start == plan.frame_start * 1024 - 4096
    assert stop - start == 511 * 1024 + 4096
    assert ola_sample_range(10, 20) == (10 * 1024 - 4096, 19 * 1024)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError):
        plan_segments(10, 64, "overlap", 32)
    with pytest.raises(ValueError):
        plan_segments(10, 64, "nope")
    with pytest.raises(ValueError):
        plan_segments(0, 64)


def test_streaming_overlap_add_equals_direct_sum():
    rng = np.random.default_rng(0)
    num_samples, overlap = 1000, 30
    blocks, start = [], -40
    while start < num_samples + 10:
        length = int(rng.integers(overlap + 1, 120))
        blocks.append((start, rng.standard_normal((length, 2, 3)).astype(np.float32)))
        start += length - overlap
    full = np.zeros((start + 200 + 40, 2, 3), np.float32)
    for s, b in blocks:
        full[s + 40 : s + 40 + len(b)] += b
    want = full[40 : 40 + num_samples]

    stitcher = StreamingOverlapAdd(num_samples)
    got = np.concatenate([stitcher.push(s, b) for s, b in blocks] + [stitcher.finish()])
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_streaming_overlap_add_rejects_gaps():
    stitcher = StreamingOverlapAdd(100)
    stitcher.push(0, np.ones((10, 1)))
    with pytest.raises(ValueError):
        stitcher.push(20, np.ones((10, 1)))


def test_short_last_segment_hand_examples():
    # T=512, context 32: a 3 s track (134 frames) + 224 frames of silence -> 384 frames, not 512
    assert plan_segments(134, 512, "overlap", 32) == [SegmentPlan(0, 0, 0, 134, 384)]
    # 600 frames: keep [0, 480), then [480, 600) fed from 448: 152 + 224 frames -> 384
    assert plan_segments(600, 512, "overlap", 32) == [
        SegmentPlan(0, 0, 0, 480),
        SegmentPlan(1, 448, 480, 600, 384),
    ]
    assert plan_segments(950, 512, "overlap", 32)[-1] == SegmentPlan(2, 896, 928, 950, 320)
    # a last segment that needs (nearly) all T frames keeps the full-T rule: it ends the track
    assert plan_segments(900, 512, "overlap", 32)[-1] == SegmentPlan(1, 388, 480, 900)
    assert plan_segments(300, 512, "overlap", 32) == [SegmentPlan(0, 0, 0, 300)]
    # Spleeter's cut pads its last segment to T, as Spleeter does
    assert all(p.frames is None for p in plan_segments(134, 512, "spleeter"))
    assert segment_sample_range(SegmentPlan(0, 0, 0, 134, 384), 512) == (-4096, 383 * 1024)


@pytest.mark.parametrize(
    "n_frames", [1, 63, 64, 65, 134, 287, 288, 479, 480, 481, 545, 600, 1000, 3001]
)
def test_short_segments_cover_what_they_keep(n_frames):
    T, context = 512, 32
    plans = plan_segments(n_frames, T, "overlap", context)
    kept = np.zeros(n_frames, int)
    for p in plans:
        length = p.length(T)
        assert length % SEGMENT_QUANTUM == 0 and 0 < length <= T
        assert p.frame_start <= p.keep_start < p.keep_stop <= p.frame_start + length
        assert p.keep_start - p.frame_start >= min(context, p.keep_start)
        kept[p.keep_start : p.keep_stop] += 1
    assert (kept == 1).all()
    assert all(p.frames is None for p in plans[:-1])
    last = plans[-1]
    needed = n_frames - (last.keep_start - context if last.index else 0) + SILENCE_FRAMES
    if last.frames is None:
        assert needed > T - SEGMENT_QUANTUM
    else:  # enough silence after the track for the result not to change
        assert last.frame_start + last.frames - n_frames >= SILENCE_FRAMES
        assert last.frames - SEGMENT_QUANTUM < needed <= last.frames
