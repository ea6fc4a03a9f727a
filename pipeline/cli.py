"""The ``pipeline`` command: run, validate, plan, inspect and schema.

User mistakes (bad spec, missing files, bad input under ``on_error: fail``) print one clear message
and exit non-zero without a traceback; set ``TOKENMILL_DEBUG=1`` to see tracebacks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from pipeline.commands import EXTRA_COMMANDS
from pipeline.errors import SpecError, TokenmillError


def _parser() -> argparse.ArgumentParser:
    from pipeline.registry import discover_stages

    discover_stages()  # stage modules may register extra commands
    import pipeline.submit  # noqa: F401  (registers 'pipeline submit')
    from pipeline import __version__

    p = argparse.ArgumentParser(prog="pipeline", description="tokenmill: raw text to training-ready tokens.",
                                epilog=_examples("pipeline run yaml_specs/quickstart.yaml",
                                                 "pipeline inspect out/quickstart/<stage>"),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"tokenmill {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    _add = _adder(sub)

    run = _add("run", "validate, plan and run a spec",
               "pipeline run yaml_specs/quickstart.yaml",
               "pipeline run spec.yaml --output /data/out --force <stage>",
               "pipeline run spec.yaml --address ray://head:10001 --quiet")
    run.add_argument("spec")
    run.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    run.add_argument("--output", help="output directory (overrides the spec)")
    run.add_argument("--force", action="append", default=[], metavar="STAGE",
                     help="redo STAGE and everything downstream (repeatable)")
    run.add_argument("--quiet", action="store_true", help="no progress display")
    run.add_argument("--break-lock", action="store_true",
                     help="remove the output's lock if it is stale (left by a run that died)")

    val = _add("validate", "check a spec and print its stages", "pipeline validate yaml_specs/quickstart.yaml")
    val.add_argument("spec")

    plan = _add("plan", "print the DAG and what a run would do",
                "pipeline plan yaml_specs/quickstart.yaml", "pipeline plan spec.yaml --force <stage>")
    plan.add_argument("spec")
    plan.add_argument("--output")
    plan.add_argument("--force", action="append", default=[], metavar="STAGE")

    ins = _add("inspect", "show a stage's output: schema, rows, manifest figures, side tables; or a file's summary",
               "pipeline inspect out/quickstart            # every stage: type and rows",
               "pipeline inspect out/quickstart/<stage> --rows 5",
               "pipeline inspect out/quickstart/tokenizer/tokenizer.json",
               "pipeline inspect out/quickstart/<stage>/megatron/tokens.idx")
    ins.add_argument("path")
    ins.add_argument("--rows", type=int, default=3)

    _add("schema", "print the spec's JSON Schema (for editors)", "pipeline schema > tokenmill.schema.json")

    from pipeline import report

    rep = _add("report", "rebuild report.html and report.json of an output directory",
               "pipeline report out/quickstart")
    report._args(rep)

    for name, (help_text, add_args, _) in EXTRA_COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text))
    return p


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _adder(sub: Any) -> Callable[..., argparse.ArgumentParser]:
    """``add(name, help, *examples)``: a subcommand whose ``--help`` ends with usage examples."""

    def add(name: str, help_text: str, *examples: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text,
                              epilog=_examples(*examples) if examples else None,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    return add


def _print_error(err: Console, message: str) -> None:
    """``error: <message>``; the message is plain text (paths or values may contain ``[...]``)."""
    err.print(Text.assemble(("error:", "red"), " ", message), highlight=False, soft_wrap=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console()
    err = Console(stderr=True)
    try:
        return _dispatch(args, console)
    except SpecError as exc:
        for line in str(exc).splitlines():
            _print_error(err, line)
        return exc.exit_code
    except TokenmillError as exc:
        _print_error(err, str(exc))
        return exc.exit_code
    except OSError as exc:  # storage the user pointed at is unreachable, full or denied: say so, no traceback
        if os.environ.get("TOKENMILL_DEBUG"):
            raise
        _print_error(err, str(exc))
        return 1
    except KeyboardInterrupt:
        err.print("interrupted; re-run the same command to resume")
        return 130


def _dispatch(args: argparse.Namespace, console: Console) -> int:
    from pipeline.spec import json_schema, load_spec

    if args.command == "schema":
        console.print_json(json.dumps(json_schema()))
        return 0
    if args.command == "inspect":
        from pipeline.inspect_output import inspect_path

        inspect_path(args.path, console, rows=args.rows)
        return 0
    if args.command == "report":
        from pipeline.report import report_command

        return report_command(args, console)
    if args.command in EXTRA_COMMANDS:
        return EXTRA_COMMANDS[args.command][2](args, console)
    spec = load_spec(args.spec)
    if args.command == "validate":
        console.print(f"{args.spec}: valid ({len(spec.stages)} stages: {', '.join(s.name for s in spec.stages)})")
        return 0
    from pipeline.runner import make_plan, run_pipeline

    if args.command == "plan":
        plan = make_plan(spec, spec.output_dir(args.output), args.force)
        _print_plan(plan, console)
        return 0
    if args.command == "run":
        from pipeline.progress import QuietReporter, Reporter

        reporter = QuietReporter() if args.quiet else Reporter()
        plan = run_pipeline(spec, output=args.output, force=args.force, address=args.address, reporter=reporter,
                            break_lock=args.break_lock)
        ran = sum(s.action == "run" for s in plan.stages)
        console.print(f"done: {ran} stage(s) run, {len(plan.stages) - ran} up to date; output in {plan.output}")
        return 0
    raise AssertionError(args.command)


def _print_plan(plan, console: Console) -> None:
    t = Table(title=f"plan → {plan.output}")
    for col in ("stage", "type", "reads", "action", "why", "fingerprint"):
        t.add_column(col)
    for sp in plan.stages:
        node = plan.dag.nodes[sp.name]
        reads = ", ".join([*node.dataset_inputs, *(f"{f}={r}" for f, r in node.artifact_inputs.items())])
        style = "green" if sp.action == "skip" else "yellow"
        t.add_row(Text(sp.name), Text(sp.type), Text(reads), Text(sp.action, style=style), Text(sp.reason),
                  sp.fingerprint[:12])
    console.print(t)


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
