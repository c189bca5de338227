"""The `tessera` command: submit, follow, read, cancel and batch jobs from a terminal."""

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from tessera_client.api import DEFAULT_API_URL, DEFAULT_RESULTS_URL, Tessera
from tessera_client.errors import (
    APIError,
    JobFailedError,
    JobNotFinishedError,
    WaitTimeoutError,
)
from tessera_client.sse import ServerEvent

EXIT_FAILED = 1
EXIT_NOT_FINISHED = 3
EXIT_TIMEOUT = 124
Handler = Callable[[Tessera, argparse.Namespace, Console], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit status is 0 on success."""
    args = build_parser().parse_args(argv)
    # Progress and messages go to stderr so that stdout stays the answer, fit for pipes.
    console = Console(stderr=True)
    handler: Handler = args.handler
    try:
        with Tessera(args.api_url, args.results_url, args.api_key) as client:
            return handler(client, args, console)
    except WaitTimeoutError as error:
        console.print(f"[yellow]timeout:[/] {error}", highlight=False)
        return EXIT_TIMEOUT
    except JobNotFinishedError as error:
        console.print(f"[yellow]not finished:[/] {error.detail}", highlight=False)
        return EXIT_NOT_FINISHED
    except APIError as error:
        _print_error(console, error)
        return EXIT_FAILED
    except httpx.TransportError as error:
        console.print(f"[red]cannot reach the API:[/] {error}", highlight=False)
        return EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per operation, connection options on each."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api-url", default=os.environ.get("TESSERA_API_URL", DEFAULT_API_URL),
                        help="ingest API (env TESSERA_API_URL)")
    common.add_argument("--results-url",
                        default=os.environ.get("TESSERA_RESULTS_URL", DEFAULT_RESULTS_URL),
                        help="results API (env TESSERA_RESULTS_URL)")
    common.add_argument("--api-key", default=os.environ.get("TESSERA_API_KEY"),
                        help="API key (env TESSERA_API_KEY)")
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")

    parser = argparse.ArgumentParser(prog="tessera", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    submit = commands.add_parser("submit", parents=[common], help="submit media and a prompt")
    submit.add_argument("files", nargs="+", type=Path, metavar="FILE")
    submit.add_argument("prompt")
    submit.add_argument("--model")
    submit.add_argument("--max-new-tokens", type=int)
    submit.add_argument("--temperature", type=float)
    submit.add_argument("--max-tiles", type=int)
    submit.add_argument("--webhook-url")
    submit.add_argument("--json-schema", type=Path, help="a file holding a JSON Schema")
    submit.add_argument("--previous-job-id")
    submit.add_argument("-o", "--option", action="append", default=[], metavar="FIELD=VALUE",
                        help="any other form field, e.g. -o num_frames=16 (repeatable)")
    submit.add_argument("--wait", action="store_true", help="follow the job and print its answer")
    submit.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits")
    submit.set_defaults(handler=_submit)

    status = commands.add_parser("status", parents=[common], help="show a job")
    status.add_argument("job_id")
    status.set_defaults(handler=_status)

    result = commands.add_parser("result", parents=[common], help="print a job's answer")
    result.add_argument("job_id")
    result.add_argument("--wait", action="store_true", help="wait for the job to end first")
    result.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits")
    result.set_defaults(handler=_result)

    cancel = commands.add_parser("cancel", parents=[common], help="cancel a job")
    cancel.add_argument("job_id")
    cancel.set_defaults(handler=_cancel)

    batch = commands.add_parser(
        "batch", parents=[common],
        help='run a JSONL file as one batch (lines: {"custom_id", "prompt", "files": [names '
             'relative to the file], "generation": {...}, ...job options})')
    batch.add_argument("input", type=Path, metavar="FILE.jsonl")
    batch.add_argument("--output", type=Path,
                       help="results JSONL, one line per custom_id (default FILE.results.jsonl)")
    batch.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait in all")
    batch.set_defaults(handler=_batch)
    return parser


def _submit(client: Tessera, args: argparse.Namespace, console: Console) -> int:
    options: dict[str, Any] = {
        "model": args.model, "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature, "max_tiles": args.max_tiles,
        "webhook_url": args.webhook_url, "previous_job_id": args.previous_job_id,
        "json_schema": json.loads(args.json_schema.read_text()) if args.json_schema else None,
    }
    for item in args.option:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"tessera: --option wants FIELD=VALUE, not {item!r}")
        options[name] = value
    with Progress(TextColumn("uploading"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, transient=True, disable=args.quiet) as progress:
        task = progress.add_task("upload", total=None)
        job = client.submit(args.files, args.prompt, **options,
                            on_progress=lambda sent, total: progress.update(
                                task, completed=sent, total=total))
    if not args.wait:
        _print(args, job.raw, job.id)
        return 0
    if not args.quiet:
        console.print(f"job [bold]{job.id}[/]  trace {job.trace_id}", highlight=False)
    return _wait_and_print(client, args, console, job.id)


def _status(client: Tessera, args: argparse.Namespace, _: Console) -> int:
    job = client.get(args.job_id)
    error = job.error or {}
    line = f"{job.id}\t{job.status}\tmodel={job.model}\ttrace_id={job.trace_id}"
    if error:
        line += f"\terror={error.get('code')}: {error.get('message')}"
    _print(args, job.raw, line)
    return 0


def _result(client: Tessera, args: argparse.Namespace, console: Console) -> int:
    if args.wait:
        return _wait_and_print(client, args, console, args.job_id)
    result = client.result(args.job_id)
    _print(args, result.raw, result.text)
    return 0


def _cancel(client: Tessera, args: argparse.Namespace, _: Console) -> int:
    job = client.cancel(args.job_id)
    _print(args, job.raw, f"{job.id}\t{job.status}")
    return 0


def _wait_and_print(client: Tessera, args: argparse.Namespace, console: Console,
                    job_id: str) -> int:
    """Follow the job with a spinner showing its status and output, then print the answer."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=True, disable=args.quiet) as progress:
        task = progress.add_task("queued")
        received = 0

        def show(event: ServerEvent) -> None:
            nonlocal received
            data = event.json()
            if event.event == "status":
                progress.update(task, description=data["status"])
            elif event.event == "output":
                received += len(data.get("delta", ""))
                progress.update(task, description=f"inferring · {received} characters")

        job = client.wait(job_id, args.timeout, on_event=show)
    if job.status != "succeeded":
        error = job.error or {}
        console.print(f"[red]{job.status}[/] {error.get('code', '')}: {error.get('message', '')}",
                      highlight=False)
        _print(args, job.raw, None)
        return EXIT_FAILED
    result = client.result(job_id)
    _print(args, result.raw, result.text)
    return 0


def _batch(client: Tessera, args: argparse.Namespace, console: Console) -> int:
    """Submit the JSONL as one server-side batch, follow its counters, write its results."""
    text = args.input.read_text()
    names = sorted({name for line in text.splitlines() if line.strip()
                    for name in json.loads(line).get("files", [])})
    output: Path = args.output or args.input.with_suffix(".results.jsonl")
    with (ExitStack() as files,
          Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=console, disable=args.quiet) as progress):
        # Lines name their files relative to the JSONL; the server matches them by that name.
        opened = [(name, files.enter_context((args.input.parent / name).open("rb")))
                  for name in names]
        upload = progress.add_task("uploading", total=None)
        batch = client.submit_batch(text.encode(), opened, on_progress=lambda sent, total:
                                    progress.update(upload, completed=sent, total=total))
        progress.remove_task(upload)
        jobs = progress.add_task(f"batch {batch.id}", total=batch.total)
        batch = client.wait_batch(batch.id, args.timeout, on_update=lambda current:
                                  progress.update(jobs, completed=current.finished))
    lines = client.batch_results(batch.id)
    output.write_text("".join(json.dumps(line) + "\n" for line in lines))
    failures = sum(line["status"] != "succeeded" for line in lines)
    console.print(f"{len(lines) - failures} succeeded, {failures} did not → {output}",
                  highlight=False)
    if args.json:
        print(json.dumps(batch.raw, indent=2))
    return EXIT_FAILED if failures else 0


def _print(args: argparse.Namespace, raw: dict[str, Any], text: str | None) -> None:
    if args.json:
        print(json.dumps(raw, indent=2))
    elif text is not None:
        print(text)


def _print_error(console: Console, error: APIError) -> None:
    console.print(f"[red]error {error.code}[/] (HTTP {error.status}): {error.detail}",
                  highlight=False)
    if isinstance(error, JobFailedError) and error.job_error:
        console.print(f"job error: {error.job_error.get('code')}: "
                      f"{error.job_error.get('message')}", highlight=False)


if __name__ == "__main__":
    sys.exit(main())
