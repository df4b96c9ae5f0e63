"""The `duet` command line: `duet serve`, `duet turns FILE.wav --jsonl`, `duet talk --audio IN.wav`, `duet config`.

Client commands take `--server HOST:PORT` (or `DUET_SERVER`); with no server reachable they start the
embedded stack (a real tritonserver on loopback plus the session service) for the duration of the call.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

from duet.errors import DuetError
from duet.sdk import probe, stream_file

DEFAULT_SERVER = "127.0.0.1:50051"
FLOOR_TYPES = frozenset(
    {"speech_start", "speech_end", "eot_tentative", "eot_cancel", "eot_commit", "backchannel", "barge_in"}
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="duet", description="Duet real-time conversational engine")
    p.add_argument("--config", help="YAML settings file (default: $DUET_CONFIG)")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the whole stack in the foreground (embedded Triton unless configured)")
    s.add_argument("--host", default=None)
    s.add_argument("--port", type=int, default=None)

    t = sub.add_parser("turns", help="stream a WAV file and print floor events")
    t.add_argument("file")
    t.add_argument("--jsonl", action="store_true", help="one JSON object per line (the stable floor-event format)")
    t.add_argument("--server", default=None, help="HOST:PORT of a Duet server (default $DUET_SERVER)")
    t.add_argument("--speed", type=float, default=1.0, help="x real time; 0 = as fast as possible")
    t.add_argument("--all-events", action="store_true", help="also print session/error events")
    t.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="session option, e.g. floor.commit_threshold=0.8",
    )

    k = sub.add_parser(
        "talk", help="a recorded user talks to the replica; writes reply.wav, events.jsonl, transcript.json"
    )
    k.add_argument("--audio", required=True, help="the user's recording (16 kHz mono PCM16 WAV)")
    k.add_argument("--persona", default="", help="persona name (default: the server's)")
    k.add_argument("--out", default="talk-out", help="output folder (default: ./talk-out)")
    k.add_argument("--server", default=None, help="HOST:PORT of a Duet server (default $DUET_SERVER)")
    k.add_argument("--speed", type=float, default=1.0, help="x real time (1 = a live user; 0 = as fast as possible)")
    k.add_argument("--jsonl", action="store_true", help="print every event as JSON lines while talking")
    k.add_argument("--echo-gain", type=float, default=0.0, help="simulate speaker bleed at this gain (e.g. 0.3)")
    k.add_argument("--echo-delay-ms", type=float, default=120.0, help="speaker-to-mic delay of the bleed")
    k.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="session option")

    sub.add_parser("config", help="print the effective settings")
    return p


def _settings(args: argparse.Namespace) -> Any:
    from orchestrator.config import load_settings

    return load_settings(args.config)


@contextlib.asynccontextmanager
async def _server_for(args: argparse.Namespace) -> AsyncIterator[str]:
    """The requested/configured server if it answers, else an embedded stack for this call."""
    explicit = args.server or os.environ.get("DUET_SERVER")
    target = explicit or DEFAULT_SERVER
    if await probe(target):
        yield target
        return
    if explicit:
        print(f"duet: no server at {target}; starting the embedded stack for this call", file=sys.stderr)
    import dataclasses

    from orchestrator.app import running_stack

    settings = _settings(args)
    settings = dataclasses.replace(settings, server=dataclasses.replace(settings.server, port=0))
    async with running_stack(settings) as running:
        yield running.address


async def _turns(args: argparse.Namespace) -> int:
    from duet.wav import read_pcm16

    read_pcm16(args.file)  # fail fast on a bad file, before starting anything
    options = {"mode": "floor", **_options(args.option)}
    async with _server_for(args) as server:
        async for event in stream_file(args.file, server, speed=args.speed, options=options):
            if not args.all_events and event.get("type") not in FLOOR_TYPES:
                if event.get("type") == "error":
                    print(f"duet: {event.get('code')}: {event.get('message')}", file=sys.stderr)
                continue
            if args.jsonl:
                print(json.dumps(event), flush=True)
            else:
                extra = {k: v for k, v in event.items() if k not in ("type", "t", "compute_ms")}
                print(f"{event['t']:8.3f}s  {event['type']:<14} {event.get('compute_ms', 0):7.1f} ms  {extra or ''}")
    return 0


def _options(raw: list[str]) -> dict[str, str]:
    bad = [o for o in raw if "=" not in o]
    if bad:
        raise DuetError("bad_option", f"options must be KEY=VALUE, got {bad}")
    return dict(o.split("=", 1) for o in raw)


async def _talk(args: argparse.Namespace) -> int:
    from duet.talk import talk
    from duet.wav import read_pcm16

    read_pcm16(args.audio)  # fail fast on a bad file, before starting anything
    options = _options(args.option)

    def show(event: dict[str, Any]) -> None:
        if args.jsonl:
            print(json.dumps(event), flush=True)
        elif event.get("type") in ("user_turn", "replica_turn"):
            who = "user   " if event["type"] == "user_turn" else "replica"
            cut = " [interrupted]" if event.get("interrupted") else ""
            print(f"{event['t']:8.2f}s  {who}  {event['text']}{cut}", flush=True)
        elif event.get("type") == "error":
            print(f"duet: {event.get('code')}: {event.get('message')}", file=sys.stderr)

    async with _server_for(args) as server:
        await talk(
            args.audio,
            server,
            args.out,
            persona=args.persona,
            options=options,
            speed=args.speed,
            echo_gain=args.echo_gain,
            echo_delay_ms=args.echo_delay_ms,
            on_event=show,
        )
    if not args.jsonl:
        print(f"duet: wrote {args.out}/reply.wav, events.jsonl, transcript.json", file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import dataclasses

    from orchestrator.app import Running, run, serve

    settings = _settings(args)
    server = dataclasses.replace(
        settings.server,
        host=args.host or settings.server.host,
        port=settings.server.port if args.port is None else args.port,
    )
    settings = dataclasses.replace(settings, server=server)

    def ready(r: Running) -> None:
        print(f"duet: serving sessions on {r.address} (triton {r.triton_url})", flush=True)

    run(lambda: serve(settings, ready))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose or args.command == "serve" else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "config":
            from orchestrator.config import as_dict

            print(json.dumps(as_dict(_settings(args)), indent=2))
            return 0
        if args.command in ("turns", "talk"):
            import uvloop

            return uvloop.run(_turns(args) if args.command == "turns" else _talk(args))
    except DuetError as err:
        print(f"duet: {err.code}: {err.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as err:
        code = getattr(err, "code", None)
        if isinstance(code, str):  # orchestrator-side typed errors (embedded stack)
            print(f"duet: {code}: {err}", file=sys.stderr)
            return 2
        raise
    return 2


if __name__ == "__main__":
    sys.exit(main())
