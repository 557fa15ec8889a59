"""The separate job's options, declared once as a Beam PipelineOptions subclass.

The same names work on the command line (``stembeam separate --input ...``), in Dataflow flex
templates and from Python (``SeparateOptions(input=..., output=...)``).
"""

from __future__ import annotations

import argparse
import os

from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    StandardOptions,
    _BeamArgumentParser,
)

from stembeam.model.masks import POSTPROCESS_MODES, RESIDUAL_MODES
from stembeam.model.segmentation import SEGMENTATION_MODES
from stembeam.transforms import storage
from stembeam.transforms.delivery import CLIP_MODES, DEFAULT_TEMPLATE, FORMAT_NAMES

DEFAULT_MODEL = "spleeter:2stems"
LOCAL_RUNNER = "FnApiRunner"


class SeparateOptions(PipelineOptions):
    """Options of ``stembeam separate``."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--input",
            "-i",
            action="append",
            help="catalog: a glob (gs://bucket/masters/**.flac), a .csv/.jsonl "
            "manifest, a folder (MUSDB18-HQ style or plain) or one audio "
            "file; may be given several times, and files given without a "
            "flag are inputs too (the catalog is their union)",
        )
        parser.add_argument(
            "--output", "-o", help="output root; stems go to OUTPUT/<track_id>/<stem>.<format>"
        )
        parser.add_argument(
            "--model",
            default=DEFAULT_MODEL,
            help="spleeter:2stems|4stems|5stems[-16kHz], a model folder, or a "
            "gs:// model folder (default %(default)s)",
        )
        parser.add_argument(
            "--results",
            default=None,
            help="results table: a SQLAlchemy URL or bigquery:PROJECT.DATASET.TABLE"
            " (default sqlite:///OUTPUT/results.sqlite; required when "
            "OUTPUT is remote)",
        )
        parser.add_argument(
            "--segmentation",
            default="overlap",
            choices=SEGMENTATION_MODES,
            help="overlap: overlapping segments, keep their centres (no clicks); "
            "spleeter: Spleeter's exact cut (default %(default)s)",
        )
        parser.add_argument(
            "--postprocess",
            default="ratio",
            choices=POSTPROCESS_MODES,
            help="ratio masks or norbert Wiener filtering (default %(default)s)",
        )
        parser.add_argument(
            "--format",
            default="wav",
            choices=FORMAT_NAMES,
            help="stem file format (default %(default)s); opus is stored at "
            "48 kHz (or 8/12/16/24 kHz inputs' own rate)",
        )
        parser.add_argument(
            "--bit_depth",
            "--bit-depth",
            type=int,
            default=None,
            choices=(16, 24, 32),
            help="wav/flac/aiff: 16 or 24-bit integer, 32 = float (not flac); "
            "default wav 32, flac and aiff 24",
        )
        parser.add_argument(
            "--bitrate",
            default=None,
            help="mp3/ogg/opus: kbps such as 192 or 192k (ogg: the Vorbis "
            "quality of that nominal bitrate); default 320/256/256",
        )
        parser.add_argument(
            "--clip_mode",
            "--clip-mode",
            default="clip",
            choices=CLIP_MODES,
            help="samples beyond +-1 in integer and lossy files: clip them, or "
            "normalise: scale the stem down by its peak (a second local "
            "pass; default %(default)s)",
        )
        parser.add_argument(
            "--filename_template",
            "--filename-template",
            default=DEFAULT_TEMPLATE,
            help="stem file path under --output, with {track} (track id), "
            "{track_name} (its last part), {stem}, {ext}, {model}; must hold "
            "{track} and {stem} (default %(default)s)",
        )
        parser.add_argument(
            "--stems",
            default=None,
            help="stems to deliver: a subset or sums of the model's, e.g. "
            "'vocals', 'vocals,rest', 'vocals,accompaniment=drums+bass+"
            "other' (rest = the stems no item names; default: all)",
        )
        parser.add_argument(
            "--residual",
            default="share",
            choices=RESIDUAL_MODES,
            help="what the stems miss of the mixture (mostly above the model's "
            "11 kHz band): share splits it by the masks, last adds it to "
            "the last stem (with both the stems sum to the mixture), none "
            "drops it as Spleeter does (default %(default)s)",
        )
        parser.add_argument(
            "--force",
            action="store_true",
            default=False,
            help="separate tracks again even when their done-marker exists",
        )
        parser.add_argument(
            "--batch_size",
            "--batch-size",
            type=int,
            default=None,
            help="segments per model call (default: 16 where the launching "
            "machine has an NVIDIA GPU, else 4)",
        )
        parser.add_argument(
            "--run_id",
            "--run-id",
            default=None,
            help="id of this run in the results table (default: UTC time + "
            "random suffix); reuse it to resume a killed run",
        )
        parser.add_argument(
            "--precision",
            default="auto",
            choices=("auto", "float32", "bfloat16"),
            help="model arithmetic; auto (the default) picks bfloat16 on each "
            "worker that has a GPU or an AMX CPU, float32 elsewhere",
        )
        parser.add_argument(
            "--spectral_path",
            "--spectral-path",
            default="auto",
            choices=("auto", "host", "graph"),
            help="where the STFT, masks and inverse STFT run: graph = with the U-Net in one "
            "TensorFlow function per batch (on the GPU), host = numpy around it (needed by "
            "--postprocess wiener); auto (the default) picks graph on each worker that has a "
            "GPU, host elsewhere",
        )
        parser.add_argument(
            "--model_cache",
            "--model-cache",
            default=None,
            help="local cache for model folders (default ~/.cache/stembeam)",
        )
        parser.add_argument(
            "--report",
            default=None,
            help="HTML report written at the end (default OUTPUT/report.html "
            "for SQL results; 'none' to skip)",
        )


def results_url(options: SeparateOptions) -> str:
    """``--results``, or the SQLite file next to the stems when OUTPUT is local.

    A remote OUTPUT (gs://, s3://) needs ``--results``: workers on other machines would each
    write a SQLite file of their own that the launcher never sees.
    """
    if options.results:
        return options.results
    output = options.output
    if storage.is_local(output):
        return "sqlite:///" + os.path.abspath(os.path.join(output, "results.sqlite"))
    raise ValueError(
        f"--output {output} is remote: pass --results (a postgresql:// URL or "
        "bigquery:PROJECT.DATASET.TABLE) that the workers can reach"
    )


def _given(argv: list[str], flag: str) -> bool:
    """Whether ``--flag`` appears in ``argv`` (as ``--flag value`` or ``--flag=value``)."""
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def apply_local_defaults(options: PipelineOptions, argv: list[str]) -> None:
    """No --runner given: run on the Python FnApiRunner, threads sharing one model, one worker
    per core unless ``--direct_num_workers`` is given (never the DirectRunner's Prism download).
    """
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        standard.runner = LOCAL_RUNNER
        direct = options.view_as(DirectOptions)
        if not _given(argv, "--direct_num_workers"):
            direct.direct_num_workers = os.cpu_count() or 1
        if direct.direct_running_mode == "in_memory":
            direct.direct_running_mode = "multi_threading"


def sources(options: SeparateOptions) -> list[str]:
    """The catalog sources of ``options.input`` (one string from Python, a list from flags)."""
    value = options.input
    return [value] if isinstance(value, str) else list(value or [])


def _option_parser() -> argparse.ArgumentParser:
    """Every option a Beam PipelineOptions subclass declares (what ``PipelineOptions`` parses)."""
    parser = _BeamArgumentParser(allow_abbrev=False, add_help=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    return parser


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def normalize_argv(argv: list[str]) -> list[str]:
    """``argv`` with every token outside an option turned into ``--input=TOKEN``.

    Raises UsageError for an option no PipelineOptions subclass declares (Beam itself would
    only warn and drop it) or one missing its value.
    """
    actions = _option_parser()._option_string_actions
    out, i = [], 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            out += [f"--input={t}" for t in argv[i + 1 :]]
            break
        if not token.startswith("-") or token == "-":
            out.append(f"--input={token}")
        else:
            name, has_value, _ = token.partition("=")
            action = actions.get(name)
            if action is None:
                raise UsageError(f"unknown option {name}")
            out.append(token)
            if _takes_value(action) and not has_value:
                if i + 1 >= len(argv) or (argv[i + 1].startswith("--") and action.nargs != "?"):
                    raise UsageError(f"option {name} needs a value")
                if action.nargs != "?" or not argv[i + 1].startswith("-"):
                    i += 1
                    out.append(argv[i])
        i += 1
    return out


class UsageError(ValueError):
    """Arguments that cannot be parsed (exit status 2)."""


def parse_options(argv: list[str] | None = None) -> SeparateOptions:
    """Parse ``stembeam separate`` arguments: the options below, any Beam pipeline option, and
    catalog sources as positional arguments; raises UsageError for anything else."""
    argv = normalize_argv(list(argv or []))
    parser = _option_parser()
    parser.error = _raise_usage  # type: ignore[method-assign]
    parser.parse_args(argv)  # type and choice errors (--batch_size x)
    options = PipelineOptions(argv)
    separate = options.view_as(SeparateOptions)
    missing = [f"--{name}" for name in ("input", "output") if not getattr(separate, name)]
    if missing:
        raise UsageError(f"stembeam separate needs {' and '.join(missing)}")
    apply_local_defaults(options, argv)
    return separate


def _raise_usage(message: str) -> None:
    raise UsageError(message)
