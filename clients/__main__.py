"""python -m clients: search, tag, caption and store clips with a running BLAT gateway (REST, or gRPC with --grpc).

Examples:
  python -m clients search "dog barking" -k 5
  python -m clients --url http://gateway:8080 --api-key $KEY tag clip.wav --top-k 5
  python -m clients --grpc 127.0.0.1:50051 caption clip.wav --n-best 3 --tag Dog
  python -m clients add dog-001 clip.wav --tag dog --caption "a dog barks"
  python -m clients search-audio clip.wav --tags-any dog

Answers are printed as JSON on stdout. Errors go to stderr as "status code: message", exit status 1
(2 for a usage error). The server and key default to $BLAT_URL / $BLAT_GRPC and $BLAT_API_KEY.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from clients.blat_client import ClientError, connect


def _filter(args) -> dict:
    return {k: v for k, v in {"tags_any": args.tags_any, "tags_all": args.tags_all, "source_prefix": args.source_prefix,
                              "min_duration_s": args.min_duration, "max_duration_s": args.max_duration}.items() if v}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clients", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=os.environ.get("BLAT_URL", "http://127.0.0.1:8080"),
                   help="REST base URL (default: $BLAT_URL or http://127.0.0.1:8080)")
    p.add_argument("--grpc", metavar="HOST:PORT", default=os.environ.get("BLAT_GRPC"),
                   help="use the gRPC face at this address instead of REST (default: $BLAT_GRPC)")
    p.add_argument("--api-key", default=os.environ.get("BLAT_API_KEY"), help="API key (default: $BLAT_API_KEY)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default: 60)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def filters(sp):
        sp.add_argument("-k", type=int, default=10, help="number of results (default: 10)")
        sp.add_argument("--tags-any", action="append", metavar="TAG", help="keep items with any of these tags")
        sp.add_argument("--tags-all", action="append", metavar="TAG", help="keep items with all of these tags")
        sp.add_argument("--source-prefix", help="keep items whose source_uri starts with this")
        sp.add_argument("--min-duration", type=float, metavar="S", help="keep items at least this long")
        sp.add_argument("--max-duration", type=float, metavar="S", help="keep items at most this long")

    s = sub.add_parser("search", help="items matching a text query")
    s.add_argument("query", help='free text, e.g. "dog barking"')
    filters(s)
    s = sub.add_parser("search-audio", help="items that sound like an audio file")
    s.add_argument("file", help="WAV, FLAC, OGG or MP3 file")
    filters(s)
    s = sub.add_parser("similar", help="neighbours of a stored item")
    s.add_argument("id")
    filters(s)
    s = sub.add_parser("tag", help="zero-shot tags of an audio file")
    s.add_argument("file", help="WAV, FLAC, OGG or MP3 file")
    s.add_argument("--top-k", type=int, default=10, help="tags per clip / window (default: 10)")
    s.add_argument("--label", action="append", dest="labels", metavar="LABEL",
                   help="score these labels instead of the 527 AudioSet ones (repeat)")
    s.add_argument("--window", type=float, default=0.0, metavar="S", help="also tag windows of S seconds")
    s.add_argument("--hop", type=float, default=0.0, metavar="S", help="window hop (default: the window)")
    s = sub.add_parser("caption", help="captions of an audio file")
    s.add_argument("file", help="WAV, FLAC, OGG or MP3 file")
    s.add_argument("--n-best", type=int, default=1, help="captions to return (default: 1)")
    s.add_argument("--beam-size", type=int, default=0, help="beam size (default: the bundle's)")
    s.add_argument("--tag", action="append", dest="tags", default=[], metavar="TAG",
                   help="AudioSet label guiding the captioner (repeat)")
    s = sub.add_parser("add", help="store an audio file under an id")
    s.add_argument("id", help="item id: 1-200 characters of A-Z a-z 0-9 . _ : / -")
    s.add_argument("file", help="a local audio file to upload (or, with --server-path, a path on the server)")
    s.add_argument("--server-path", action="store_true", help="FILE is a server-side path under the ingest roots")
    s.add_argument("--tag", action="append", dest="tags", default=[], metavar="TAG", help="item tag (repeat)")
    s.add_argument("--caption", default="", help="item caption")
    s.add_argument("--upsert", action="store_true", help="replace an item with the same id")
    for name, text in (("get", "show a stored item"), ("delete", "delete a stored item")):
        sub.add_parser(name, help=text).add_argument("id")
    s = sub.add_parser("embed-text", help="text embeddings")
    s.add_argument("texts", nargs="+")
    s = sub.add_parser("embed-audio", help="the embedding of an audio file")
    s.add_argument("file")
    s = sub.add_parser("rebuild", help="rebuild the index from a server-side folder (or --manifest file)")
    s.add_argument("folder", nargs="?")
    s.add_argument("--manifest", help="a server-side JSON Lines manifest instead of a folder")
    sub.add_parser("rebuild-status", help="progress of a rebuild job").add_argument("job_id")
    sub.add_parser("rebuild-cancel", help="cancel a rebuild job").add_argument("job_id")
    sub.add_parser("rollback", help="make the previous index version live again")
    sub.add_parser("stats", help="index statistics")
    sub.add_parser("info", help="the served bundle and backend")
    return p


def run(args) -> object:
    with connect(args.url, args.grpc, args.api_key, args.timeout) as c:
        cmd = args.command
        if cmd == "search":
            return c.search_text(args.query, args.k, _filter(args))
        if cmd == "search-audio":
            return c.search_audio(args.file, args.k, _filter(args))
        if cmd == "similar":
            return c.search_item(args.id, args.k, _filter(args))
        if cmd == "tag":
            return c.tag(args.file, args.labels, args.top_k, args.window, args.hop)
        if cmd == "caption":
            return c.caption(args.file, args.tags, args.n_best, args.beam_size)
        if cmd == "add":
            if args.server_path:
                return c.add_item(args.id, path=args.file, tags=args.tags, caption=args.caption, upsert=args.upsert)
            return c.add_item(args.id, audio=args.file, tags=args.tags, caption=args.caption, upsert=args.upsert)
        if cmd == "get":
            return c.get_item(args.id)
        if cmd == "delete":
            return c.delete_item(args.id)
        if cmd == "embed-text":
            return c.embed_text(args.texts)
        if cmd == "embed-audio":
            return c.embed_audio(args.file)
        if cmd == "rebuild":
            return c.start_rebuild(args.folder, args.manifest)
        if cmd == "rebuild-status":
            return c.rebuild_status(args.job_id)
        if cmd == "rebuild-cancel":
            return c.cancel_rebuild(args.job_id)
        if cmd == "rollback":
            return c.rollback()
        if cmd == "stats":
            return c.stats()
        if cmd == "info":
            return c.info()
    raise AssertionError(cmd)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        out = run(args)
    except ClientError as e:
        print(f"{e.status} {e.code}: {e.message}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:  # an unreadable local file, contradictory arguments
        print(f"error: {e}", file=sys.stderr)
        return 2
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
