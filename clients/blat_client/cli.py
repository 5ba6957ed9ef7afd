"""The commands that talk to a running gateway: search, tag, caption, add, add-folder, get, delete, rebuild, rollback,
stats and info. The `blat` command line (the server's distribution) includes them; with only this client installed,
run them as `python -m blat_client COMMAND ...`.

The server is --url (default $BLAT_URL, else http://127.0.0.1:8080): http(s)://host:port speaks REST,
grpc://host:port gRPC. The API key is --api-key (default $BLAT_API_KEY). Answers print as text; --json prints JSON
for scripts.

Exit status: 0 done; 1 the server refused or failed the request (its message on stderr); 2 a usage error or an
unreadable local file; 3 the server could not be reached or did not answer in time; 4 finished with failures
(some files of add-folder, a rebuild that failed or was cancelled).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from blat_client import __version__
from blat_client.audio import AUDIO_SUFFIXES
from blat_client.client import Client
from blat_client.errors import ClientError
from blat_client.types import AddReport

OK, REFUSED, USAGE, UNREACHABLE, PARTIAL = 0, 1, 2, 3, 4
COMMANDS = (
    "search",
    "tag",
    "caption",
    "add",
    "add-folder",
    "get",
    "list-items",
    "delete",
    "rebuild",
    "rollback",
    "stats",
    "info",
)


class Progress:
    """A progress line on stderr: redrawn in place on a terminal, otherwise at most one line per second."""

    def __init__(self, what: str, total: int, quiet: bool = False):
        self.what, self.total, self.quiet = what, total, quiet
        self.tty, self.last, self.t0 = sys.stderr.isatty(), 0.0, time.monotonic()

    def update(self, done: int, note: str = "", force: bool = False, total: int | None = None) -> None:
        self.total = self.total if total is None else total
        now = time.monotonic()
        if self.quiet or not (force or self.tty or now - self.last >= 1.0):
            return
        self.last = now
        frac = done / self.total if self.total else 1.0
        bar = "#" * int(24 * frac)
        line = f"{self.what} [{bar:<24}] {done}/{self.total} {now - self.t0:5.1f}s {note}"
        sys.stderr.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty and not self.quiet:
            sys.stderr.write("\n")


def common_options() -> argparse.ArgumentParser:
    """--url, --api-key, --timeout and --json: accepted by every remote command (after its name)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection and output")
    g.add_argument(
        "--url",
        default=os.environ.get("BLAT_URL", "http://127.0.0.1:8080"),
        help="gateway: http(s)://host:port (REST) or grpc://host:port (default: $BLAT_URL or http://127.0.0.1:8080)",
    )
    g.add_argument("--api-key", default=os.environ.get("BLAT_API_KEY"), help="API key (default: $BLAT_API_KEY)")
    g.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default: 60)")
    g.add_argument("--json", action="store_true", help="print the answer as JSON")
    return p


def _filters(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--tags-any", action="append", metavar="TAG", help="keep items with any of these tags (repeat)")
    sp.add_argument("--tags-all", action="append", metavar="TAG", help="keep items with all of these tags (repeat)")
    sp.add_argument("--source-prefix", help="keep items whose source_uri starts with this")
    sp.add_argument("--min-duration", type=float, metavar="S", help="keep items at least S seconds long")
    sp.add_argument("--max-duration", type=float, metavar="S", help="keep items at most S seconds long")


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    """Add the remote commands to an argparse subparsers object; each sets `remote=True`."""

    def cmd(name: str, help: str, description: str = "") -> argparse.ArgumentParser:
        sp = sub.add_parser(
            name,
            help=help,
            description=description or help,
            parents=parents,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sp.set_defaults(remote=True, command=name)
        return sp

    s = cmd(
        "search",
        "stored items matching a text query, a clip, or a stored item",
        'blat search "dog barking" | blat search --audio clip.wav | blat search --similar ITEM_ID',
    )
    s.add_argument("query", nargs="?", help='free text, e.g. "dog barking"')
    s.add_argument("--audio", metavar="FILE", help="find items that sound like this WAV/FLAC/OGG/MP3 file")
    s.add_argument("--similar", metavar="ID", help="find neighbours of this stored item")
    s.add_argument("-k", type=int, default=10, help="number of results (default: 10)")
    s.add_argument("--offset", type=int, default=0, help="skip this many of the best first (page 2 of ten: 10)")
    _filters(s)
    s = cmd("tag", "zero-shot AudioSet tags of an audio file (over time with --window)")
    s.add_argument("file", help="WAV, FLAC, OGG or MP3 file")
    s.add_argument("--top-k", type=int, default=10, help="tags per clip and per window (default: 10)")
    s.add_argument(
        "--label",
        action="append",
        dest="labels",
        default=[],
        metavar="LABEL",
        help="score these labels instead of the 527 AudioSet ones (repeat)",
    )
    s.add_argument("--window", type=float, default=0.0, metavar="S", help="also tag windows of S seconds")
    s.add_argument("--hop", type=float, default=0.0, metavar="S", help="window hop (default: the window)")
    s = cmd("caption", "captions of an audio file")
    s.add_argument("file", help="WAV, FLAC, OGG or MP3 file")
    s.add_argument("--n-best", type=int, default=1, help="captions to return (default: 1)")
    s.add_argument("--beam-size", type=int, default=0, help="beam size (default: the bundle's)")
    s.add_argument(
        "--tag",
        action="append",
        dest="tags",
        default=[],
        metavar="TAG",
        help="AudioSet label (display name) guiding the captioner (repeat)",
    )
    s = cmd("add", "store one audio file under an id")
    s.add_argument("id", help="item id: 1-200 characters of A-Z a-z 0-9 . _ : / -")
    s.add_argument("file", help="a local audio file to upload (with --server-path: a path on the server)")
    s.add_argument("--server-path", action="store_true", help="FILE is on the server, under its ingest roots")
    s.add_argument("--tag", action="append", dest="tags", default=[], metavar="TAG", help="item tag (repeat)")
    s.add_argument("--caption", default="", help="item caption")
    s.add_argument("--upsert", action="store_true", help="replace an item with the same id")
    s = cmd(
        "add-folder",
        "upload every audio file under a local folder, with a progress bar",
        "Each file becomes an item whose id is PREFIX + its path relative to FOLDER (spaces become '_'). Files "
        "already stored (same id or same sound: 409) are counted as skipped, so a rerun resumes.",
    )
    s.add_argument("folder", help="local folder, searched recursively for " + ", ".join(AUDIO_SUFFIXES))
    s.add_argument("--prefix", default="", help="id prefix, e.g. 'field-2026/'")
    s.add_argument("--tag", action="append", dest="tags", default=[], metavar="TAG", help="tag for every item")
    s.add_argument("--jobs", type=int, default=4, help="uploads in flight (default: 4)")
    s.add_argument("--upsert", action="store_true", help="replace items with the same id instead of skipping them")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    cmd("get", "show a stored item").add_argument("id")
    s = cmd(
        "list-items",
        "list stored items in id order, a page at a time",
        "blat list-items --limit 20 | blat list-items --cursor NEXT_CURSOR | blat list-items --all --tags-any Rain",
    )
    s.add_argument("--limit", type=int, default=100, help="items per page (default: 100)")
    s.add_argument("--cursor", default="", help="next_cursor printed by the previous page")
    s.add_argument("--all", action="store_true", help="every page, one item per line")
    _filters(s)
    cmd("delete", "delete a stored item").add_argument("id")
    s = cmd(
        "rebuild",
        "rebuild the index from a server-side folder, manifest or embedding job and wait for it",
        "Starts a background rebuild (searches keep using the old version until the new one validates), then "
        "follows it with a progress bar. Say what happens to the stored items: --replace (the new index holds only "
        "the new entries) or --merge (they are added). --status / --cancel act on a running job instead.",
    )
    s.add_argument("folder", nargs="?", help="folder on the server, under its ingest roots")
    s.add_argument("--manifest", help="JSON Lines manifest on the server instead of a folder")
    s.add_argument(
        "--embeddings",
        metavar="JOB_DIR",
        help="a finished embedding job's folder on the server "
        "(python -m blat_jobs.embed): loads precomputed embeddings instead of embedding audio",
    )
    how = s.add_mutually_exclusive_group()
    how.add_argument("--replace", action="store_true", help="the new index holds only the new entries (one is needed)")
    how.add_argument("--merge", action="store_true", help="add the new entries to the stored items (or --replace)")
    s.add_argument("--no-wait", action="store_true", help="print the started job and return")
    s.add_argument("--status", metavar="JOB", help="show a job's progress")
    s.add_argument("--cancel", metavar="JOB", help="cancel a running job")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    cmd("rollback", "make the previous index version live again")
    cmd("stats", "index statistics")
    cmd("info", "the served model bundle, backend and limits")


def _filter(args: argparse.Namespace) -> dict[str, Any]:
    return {
        k: v
        for k, v in {
            "tags_any": args.tags_any,
            "tags_all": args.tags_all,
            "source_prefix": args.source_prefix,
            "min_duration_s": args.min_duration,
            "max_duration_s": args.max_duration,
        }.items()
        if v
    }


def _audio_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def add_folder(c: Client, args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    folder = Path(args.folder)
    files = _audio_files(folder)
    bar = Progress("add-folder", len(files), args.quiet)
    entries = (
        {"id": args.prefix + str(path.relative_to(folder)).replace(" ", "_"), "audio": path, "tags": args.tags}
        for path in files
    )

    def progress(n: int, r: AddReport) -> None:
        bar.update(n, f"added {len(r.added)} skipped {len(r.skipped)} failed {len(r.failed)}", force=n == len(files))

    report = c.add_items(entries, concurrency=args.jobs, upsert=args.upsert, progress=progress)
    bar.close()
    return {
        "folder": str(folder),
        "files": len(files),
        "added": report.added,
        "skipped": [{"id": i, "reason": "already stored (409)"} for i in report.skipped],
        "failed": report.failed,
    }, PARTIAL if report.failed else OK


def rebuild(c: Client, args: argparse.Namespace) -> tuple[object, int]:
    if args.status:
        return c.rebuild_status(args.status), OK
    if args.cancel:
        return c.cancel_rebuild(args.cancel), OK
    if sum(x is not None for x in (args.folder, args.manifest, args.embeddings)) != 1:
        raise ValueError("give a server-side folder, --manifest or --embeddings (or --status / --cancel JOB)")
    if args.replace == args.merge:
        stored = c.stats().items
        raise ValueError(
            f"say what happens to the {stored} items stored now: --replace (the new index holds only the new "
            "entries: they go) or --merge (the new entries are added to them)"
        )
    mode = "replace" if args.replace else "merge"
    if args.replace and not args.quiet:
        print(
            f"replacing the index: its {c.stats().items} items go unless they are among the new entries",
            file=sys.stderr,
        )
    job = c.start_rebuild(args.folder, args.manifest, args.embeddings, mode=mode)
    if args.no_wait:
        return job, OK
    bar = Progress(f"rebuild {job.job_id}", job.total, args.quiet)
    job = c.wait_rebuild(
        job.job_id,
        on_progress=lambda j: bar.update(j.done, f"{j.state} added {j.added}", force=j.finished, total=j.total),
    )
    bar.close()
    return job, OK if job.state == "succeeded" else PARTIAL


def run(c: Client, args: argparse.Namespace) -> tuple[object, int]:
    cmd = args.command
    if cmd == "search":
        given = [x for x in (args.query, args.audio, args.similar) if x]
        if len(given) != 1:
            raise ValueError("give exactly one of: a text query, --audio FILE, --similar ID")
        if args.audio:
            return c.search_audio(args.audio, args.k, _filter(args), args.offset), OK
        if args.similar:
            return c.search_item(args.similar, args.k, _filter(args), args.offset), OK
        return c.search_text(args.query, args.k, _filter(args), args.offset), OK
    if cmd == "tag":
        return c.tag(args.file, args.labels, args.top_k, args.window, args.hop), OK
    if cmd == "caption":
        return c.caption(args.file, args.tags, args.n_best, args.beam_size), OK
    if cmd == "add":
        source = {"path": args.file} if args.server_path else {"audio": args.file}
        return c.add_item(args.id, tags=args.tags, caption=args.caption, upsert=args.upsert, **source), OK
    if cmd == "add-folder":
        return add_folder(c, args)
    if cmd == "get":
        return c.get_item(args.id), OK
    if cmd == "list-items":
        if args.all:
            return list(c.iter_items(_filter(args), args.limit)), OK
        return c.list_items(_filter(args), args.limit, args.cursor), OK
    if cmd == "delete":
        return c.delete_item(args.id), OK
    if cmd == "rebuild":
        return rebuild(c, args)
    if cmd == "rollback":
        return c.rollback(), OK
    if cmd == "stats":
        return c.stats(), OK
    if cmd == "info":
        return c.info(), OK
    raise AssertionError(cmd)


def plain(value: object) -> Any:
    """Typed answers (and lists of them) as JSON-ready data."""
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value.to_dict() if hasattr(value, "to_dict") else value


def text(cmd: str, value: object) -> str:
    """A short human reading of an answer; --json has everything."""
    d = plain(value)
    if cmd == "search":
        return (
            "\n".join(
                f"{h['score']:.3f}  {h['id']}  [{', '.join(h['item']['tags'])}]  {h['item']['caption']}"
                for h in d["hits"]
            )
            or "no results"
        )
    if cmd == "tag":
        lines = [f"{t['score']:.3f}  {t['label']}" for t in d["tags"]]
        for w in d["windows"]:
            top = ", ".join(f"{t['label']} {t['score']:.2f}" for t in w["tags"][:3])
            lines.append(f"{w['start_s']:7.2f}-{w['end_s']:<7.2f} {top}")
        return "\n".join(lines)
    if cmd == "caption":
        return "\n".join(f"{c['log_prob']:8.2f}  {c['text']}" for c in d)
    if cmd == "list-items":
        items = d if isinstance(d, list) else d["items"]
        lines = [f"{it['id']}  [{', '.join(it['tags'])}]  {it['caption']}" for it in items] or ["no items"]
        if isinstance(d, dict) and d["next_cursor"]:
            lines.append(f"next page: --cursor {d['next_cursor']}")
        return "\n".join(lines)
    if cmd == "add-folder":
        failed = "".join(f"\n  failed {f['id']}: {f['reason']}" for f in d["failed"])
        return (
            f"{d['files']} files: {len(d['added'])} added, {len(d['skipped'])} already stored, "
            f"{len(d['failed'])} failed{failed}"
        )
    return "\n".join(f"{k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in d.items())


def execute(args: argparse.Namespace) -> int:
    """Run one parsed remote command; print its answer; return the exit status."""
    try:
        with Client(args.url, args.api_key, args.timeout) as c:
            out, status = run(c, args)
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return UNREACHABLE if e.status == 0 else REFUSED
    except (OSError, ValueError) as e:  # an unreadable local file, contradictory arguments, a bad --url
        print(f"error: {e}", file=sys.stderr)
        return USAGE
    print(json.dumps(plain(out), indent=2) if args.json else text(args.command, out))
    return status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m blat_client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--version", action="version", version=f"blat-client {__version__}")
    add_commands(p.add_subparsers(dest="command", required=True, metavar="COMMAND"), [common_options()])
    return execute(p.parse_args(argv))
