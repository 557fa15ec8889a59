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
    steady_frames,
)


@pytest.mark.parametrize("n_frames", [1, 63, 64, 65, 127, 128, 129, 500, 1024])
@pytest.mark.parametrize("mode,context", [("spleeter", 0), ("overlap", 0), ("overlap", 64)])
def test_every_frame_kept_exactly_once_on_spleeters_grid(n_frames, mode, context):
    T = 64
    plans = plan_segments(n_frames, T, mode, context)
    kept = np.zeros(n_frames, int)
    for i, p in enumerate(plans):
        assert p.index == i
        # both modes keep Spleeter's cut: [i T, (i + 1) T) up to the track's end
        assert (p.keep_start, p.keep_stop) == (i * T, min((i + 1) * T, n_frames))
        assert 0 <= p.frame_start <= p.keep_start < p.keep_stop <= p.frame_start + p.length(T)
        kept[p.keep_start : p.keep_stop] += 1
    assert (kept == 1).all()


@pytest.mark.parametrize("n_frames", [1, 134, 300, 511, 512, 513, 600, 1030, 1937, 3001])
def test_overlap_inputs_hold_the_cuts_inputs_and_the_context(n_frames):
    """Each overlap segment is fed at least what the cut feeds it (up to SILENCE_FRAMES of
    silence past the track's end) plus the context before, on the cut's stride-64 grid."""
    T, context = 512, 128
    cut = plan_segments(n_frames, T, "spleeter")
    plans = plan_segments(n_frames, T, "overlap", context)
    assert len(plans) == len(cut)
    for p, c in zip(plans, cut):
        length = p.length(T)
        assert length % SEGMENT_QUANTUM == 0 and length <= T + context
        assert p.frame_start == max(0, c.frame_start - context)
        assert p.frame_start + length >= min(c.frame_start + T, n_frames + SILENCE_FRAMES)
        assert p.frame_start % SEGMENT_QUANTUM == 0


@pytest.mark.parametrize("mode", ["overlap", "spleeter"])
def test_steady_frames_is_the_commonest_input_length(mode):
    """The length the model handler warms up on: the one most segments of a long track have."""
    lengths = [p.length(512) for p in plan_segments(50 * 512 + 100, 512, mode)]
    assert steady_frames(512, mode) == max(set(lengths), key=lengths.count)


def test_spleeter_mode_is_pad_and_partition():
    plans = plan_segments(1100, 512, "spleeter")
    assert [(p.frame_start, p.keep_start, p.keep_stop) for p in plans] == [
        (0, 0, 512),
        (512, 512, 1024),
        (1024, 1024, 1100),
    ]


def test_overlap_plan_hand_example():
    # T=512, context 64, 45 s (1937 frames): the cut's first segment, then each segment fed from
    # 64 frames before what it keeps (576 frames), the last one too (it needs 465 + 224 frames)
    assert plan_segments(1937, 512, "overlap", 64) == [
        SegmentPlan(0, 0, 0, 512),
        SegmentPlan(1, 448, 512, 1024, 576),
        SegmentPlan(2, 960, 1024, 1536, 576),
        SegmentPlan(3, 1472, 1536, 1937, 576),
    ]
    assert plan_segments(1937, 512, "overlap", 0) == plan_segments(1937, 512, "spleeter")[:3] + [
        SegmentPlan(3, 1536, 1536, 1937)
    ]


def test_sample_ranges():
    plan = plan_segments(2000, 512, "overlap", 64)[1]
    start, stop = segment_sample_range(plan, 512)
    assert start == plan.frame_start * 1024 - 4096 == 448 * 1024 - 4096
    assert stop - start == 575 * 1024 + 4096
    assert ola_sample_range(10, 20) == (10 * 1024 - 4096, 19 * 1024)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError):
        plan_segments(10, 64, "overlap", 32)  # off the U-Net's 64-frame grid
    with pytest.raises(ValueError):
        plan_segments(10, 64, "overlap", 128)  # more than T
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
    # T=512, context 64: a 3 s track (134 frames) + 224 frames of silence -> 384 frames, not 512
    assert plan_segments(134, 512, "overlap", 64) == [SegmentPlan(0, 0, 0, 134, 384)]
    # 600 frames: keep [0, 512), then [512, 600) fed from 448: 152 + 224 frames -> 384
    assert plan_segments(600, 512, "overlap", 64) == [
        SegmentPlan(0, 0, 0, 512),
        SegmentPlan(1, 448, 512, 600, 384),
    ]
    assert plan_segments(1030, 512, "overlap", 64)[-1] == SegmentPlan(2, 960, 1024, 1030, 320)
    # a last segment that needs (nearly) all its frames is fed all of them
    assert plan_segments(1000, 512, "overlap", 64)[-1] == SegmentPlan(1, 448, 512, 1000, 576)
    assert plan_segments(300, 512, "overlap", 64) == [SegmentPlan(0, 0, 0, 300)]
    # Spleeter's cut pads its last segment to T, as Spleeter does
    assert all(p.frames is None for p in plan_segments(134, 512, "spleeter"))
    assert segment_sample_range(SegmentPlan(0, 0, 0, 134, 384), 512) == (-4096, 383 * 1024)


@pytest.mark.parametrize(
    "n_frames", [1, 63, 64, 65, 134, 287, 288, 479, 480, 481, 545, 600, 1000, 3001]
)
def test_short_segments_cover_what_they_keep(n_frames):
    T, context = 512, 64
    plans = plan_segments(n_frames, T, "overlap", context)
    assert all(p.length(T) == (T if p.index == 0 else T + context) for p in plans[:-1])
    last = plans[-1]
    full = T if last.index == 0 else T + context
    needed = n_frames - last.frame_start + SILENCE_FRAMES
    if last.length(T) == full:
        assert needed > full - SEGMENT_QUANTUM
    else:  # enough silence after the track for the result not to change
        assert last.frame_start + last.frames - n_frames >= SILENCE_FRAMES
        assert last.frames - SEGMENT_QUANTUM < needed <= last.frames
