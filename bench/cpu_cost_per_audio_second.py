"""CPU seconds per second of audio of the stages around the U-Net (what a GPU worker's vCPUs do).

Times, on one core, the per-segment work of a 4-stem Spleeter model at full size (T=512,
F=1024, 44.1 kHz stereo): the segment STFT + magnitude, then ratio-mask (or Wiener) reconstruction
and overlap-add of the kept frames, with random U-Net estimates (the model itself is not timed).
Decoding, resampling and file writes are not included. Prints seconds of CPU per audio second.

    OMP_NUM_THREADS=1 python3 -m bench.cpu_cost_per_audio_second [--wiener] [--segments 3]
        [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from stembeam.model.config import spleeter_config
from stembeam.model.reconstruct import reconstruct_segment, segment_spectrogram
from stembeam.model.segmentation import plan_segments, segment_sample_range


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wiener", action="store_true", help="time Wiener instead of ratio masks")
    parser.add_argument("--segments", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5, help="passes; the median is printed")
    args = parser.parse_args()
    cfg = spleeter_config("spleeter:4stems")
    plans = plan_segments(10_000, cfg.T, "overlap")[1 : 1 + args.segments]
    rng = np.random.default_rng(0)
    postprocess = "wiener" if args.wiener else "ratio"
    inputs = []
    for plan in plans:
        start, stop = segment_sample_range(plan, cfg.T, cfg.frame_length, cfg.frame_step)
        samples = rng.uniform(-0.5, 0.5, (stop - start, cfg.channels)).astype(np.float32)
        shape = (plan.length(cfg.T), cfg.F, cfg.channels, len(cfg.stems))
        inputs.append((plan, samples, rng.uniform(0, 1, shape).astype(np.float32)))
    audio = sum(p.keep_stop - p.keep_start for p in plans) * cfg.frame_step / cfg.sample_rate
    passes = []
    for _ in range(args.repeats):
        began = time.process_time()
        for plan, samples, estimates in inputs:
            mix_stft, _ = segment_spectrogram(samples, cfg)
            reconstruct_segment(mix_stft, estimates, plan, cfg, postprocess)
        passes.append((time.process_time() - began) / audio)
    print(
        f"{postprocess}: {statistics.median(passes):.4f} CPU s per audio s, median of "
        f"{args.repeats} passes ({min(passes):.4f}-{max(passes):.4f}; {len(plans)} segments, "
        f"{audio:.1f} s of audio kept, 4 stems)"
    )


if __name__ == "__main__":
    main()
