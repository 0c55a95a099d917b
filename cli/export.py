"""`deploywise export VERSION --format ...`: an LLM version exported, checked and logged, from a terminal."""

from __future__ import annotations

import json

from cli.common import EXIT_OK, UsageError, stderr_progress
from engine.llm.versions import EXPORTS_ARTIFACT
from training.export_formats import FORMATS, ExportError
from training.export_pipeline import export_version


def register(commands) -> None:
    command = commands.add_parser("export", help="export an LLM version: merged safetensors, or GGUF (f16, q8_0) "
                                                 "with an Ollama Modelfile; checked, and logged to its MLflow run")
    command.add_argument("version", metavar="VERSION", help="a version number of the LLM registry, 'champion' or 'base'")
    command.add_argument("--format", required=True, choices=FORMATS)
    command.add_argument("--out", metavar="DIR", help="destination folder (default <workspace>/exports/<version>/<format>)")
    command.add_argument("--json", action="store_true")
    command.set_defaults(handler=_export_command)


def _export_command(args, settings) -> int:
    try:
        export = export_version(settings, args.version, args.format, args.out, on_progress=None if args.json else stderr_progress)
    except ExportError as error:
        raise UsageError(str(error)) from None
    if args.json:
        print(json.dumps(export.to_dict(), indent=2))
        return EXIT_OK
    check = export.check
    print(f"{export.version} exported as {export.format} in {export.seconds:g} s to {export.folder}")
    for file in export.files:
        print(f"  {file.name}  {file.size / 1e6:.1f} MB  sha256 {file.sha256}")
    print(f"  logits check over {check.positions} positions of {check.prompts} prompts: min cosine {check.min_cosine:.6f}, "
          f"top-1 agreement {check.top1_agreement:.1%}, max |diff| {check.max_abs_diff:.4g} (needs {check.tolerance})")
    print(f"  logged to MLflow run {export.run_id} under {EXPORTS_ARTIFACT}/{export.format}/" if export.run_id
          else "  not logged to MLflow: the base model has no run")
    return EXIT_OK
