"""Kafka commands: produce (events to a topic), dlq (dead letters: list, show, replay)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from featurepipe.cli.app import app
from featurepipe.cli.common import (
    BootstrapOpt,
    DefsOpt,
    JsonOpt,
    RepoOpt,
    console,
    event_log_files,
    load_defs,
    print_json,
    project_for,
    typed_and_resolved,
    typed_path,
)
from featurepipe.errors import FeaturepipeError
from featurepipe.project import Project
from featurepipe.stream.logs import quiet_kafka_logging

if TYPE_CHECKING:
    from featurepipe.dsl.definitions import Source
    from featurepipe.stream.dlq import Letter, ReplayReport
    from featurepipe.stream.produce import EventLog, Message


TopicViewOpt = Annotated[
    str | None,
    typer.Option("--view", help="The view whose source's topic this is about."),
]


def _stream_views(project: Project) -> dict[str, tuple[str, str, Source]]:
    """topic -> (a view reading it, its entity key, its source) for every stream source."""
    d = load_defs(project)
    out: dict[str, tuple[str, str, Source]] = {}
    for v in d.views.values():
        if v.source.stream is not None:
            out.setdefault(v.source.stream.topic, (v.name, v.entity.key, v.source))
    return out


def _view_topic(project: Project, view: str) -> tuple[str, str, Source]:
    """(topic, entity key, source) of ``view``."""
    v = load_defs(project).view(view)
    if v.source.stream is None:
        raise FeaturepipeError(
            f"view '{view}': its source '{v.source.name}' has no KafkaSource (no topic); "
            "pass --topic"
        )
    return v.source.stream.topic, v.entity.key, v.source


def _key_columns(project: Project, view: str, key: str) -> str:
    """The key column(s) of a view's messages: a composite key's parts, comma-separated."""
    v = load_defs(project).view(view)
    if v.entity.composite and key == v.entity.key:
        return ",".join(v.entity.parts)
    return key


def _only_topic(project: Project, what: str) -> str:
    topics = sorted(_stream_views(project))
    if not topics:
        raise FeaturepipeError(f"no feature view has a KafkaSource: pass --topic ({what})")
    if len(topics) > 1:
        raise FeaturepipeError(
            f"the definitions read several topics ({', '.join(topics)}): pass --view or --topic"
        )
    return topics[0]


# -- produce ---------------------------------------------------------------------------------
def _produce_target(
    project: Project, view: str | None, topic: str | None, key: str | None
) -> tuple[str, str, Source | None]:
    """(topic, key, the contract if known) from --view / --topic / --key / the definitions."""
    if view is not None:
        v_topic, v_key, source = _view_topic(project, view)
        return topic or v_topic, _key_columns(project, view, key or v_key), source
    if topic is not None and key is not None:
        if not project.definitions.exists():
            return topic, key, None
        found = _stream_views(project).get(topic)
        return topic, key, None if found is None else found[2]
    if topic is None:
        topic = _only_topic(project, "and --key")
    found = _stream_views(project).get(topic)
    if found is None:
        if key is None:
            raise FeaturepipeError(
                f"no feature view reads topic '{topic}': pass --key (the entity key column)"
            )
        return topic, key, None
    return topic, _key_columns(project, found[0], key or found[1]), found[2]


PRODUCE_HELP = (
    "Send an event log to a Kafka topic, in file order, keyed by the entity key.\n\n"
    "Each row is encoded as the stream worker reads it: a JSON object, datetimes as ISO-8601 "
    "UTC text. CSV timestamps are parsed as datetimes; columns the contract declares as text "
    "stay text. JSON lines are sent as they are. The topic (and its dead-letter topic "
    "<topic>.dlq) is created when missing.\n\n"
    "Rows that break the source's contract are sent all the same, never dropped here: the "
    "stream worker dead-letters them to <topic>.dlq with the reason (see `featurepipe dlq "
    "list`). When the contract is known (a view reads the topic), every row is checked with the "
    "worker's own validator and the summary says how many will be dead-lettered and why. With "
    "--strict such a file is refused before anything is sent (exit 2)."
)


@app.command(help=PRODUCE_HELP)
def produce(
    events: Annotated[
        Path,
        typer.Option(
            help="Event log, by extension: Parquet (.parquet, .pq), CSV (.csv) or JSON lines "
            "(.jsonl, .ndjson); or a directory or glob of Parquet files (a source's own "
            "directory), sent file after file in name order; relative to the project root.",
            show_default=False,
        ),
    ],
    view: Annotated[
        str | None,
        typer.Option(
            help="Send to this view's source topic, keyed by its entity key, checked against "
            "its contract (required when the definitions read several topics)."
        ),
    ] = None,
    topic: Annotated[
        str | None, typer.Option(help="Topic to send to (instead of the view's).")
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            help="Column to key the messages by (default: the entity key); several "
            "comma-separated for a composite key (user_id,merchant_id: keyed by their composite "
            "text, as the stream worker expects)."
        ),
    ] = None,
    bootstrap: BootstrapOpt = None,
    rate: Annotated[
        float,
        typer.Option(min=0.0, help="At most this many events per second (0: as fast as it goes)."),
    ] = 0.0,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Only the first N events (file order).")
    ] = None,
    partitions: Annotated[
        int, typer.Option(min=1, help="Partitions of the topic if it is created.")
    ] = 4,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Check every event against the contract first and send nothing if one fails.",
        ),
    ] = False,
    repo: RepoOpt = None,
    defs: DefsOpt = None,
    json: JsonOpt = False,
) -> None:
    """Send an event log to a Kafka topic, in file order, keyed by the entity key."""
    quiet_kafka_logging()
    from featurepipe.progress import progress_bar
    from featurepipe.settings import kafka_bootstrap
    from featurepipe.stream.dead_letters import DLQ_SUFFIX
    from featurepipe.stream.kafka_conn import require_broker
    from featurepipe.stream.produce import (
        ProduceError,
        check_messages,
        checker,
        ensure_topics,
        event_format,
        produce_messages,
    )

    # with --topic and --key nothing needs the definitions (they check the events if present)
    project = project_for(repo, defs, definitions=view is not None or topic is None or key is None)
    shown, note = typed_path(project, events)
    files = event_log_files(project, events)
    single = files == [project.path(events)]
    if single:
        event_format(events)  # a clear error for an unknown extension before anything else
    topic, key, source = _produce_target(project, view, topic, key)
    if strict and source is None:
        raise FeaturepipeError(
            f"--strict needs the contract: no view reads topic '{topic}' (pass --view)"
        )
    server = kafka_bootstrap(bootstrap)
    require_broker(server, "produce")
    named = f"'{shown}'{note}"
    log = _read_logs(files, key, source, limit, named if single else None)
    check = checker(source) if source is not None else None
    if strict and check is not None:
        found = check_messages(log.messages(), check)
        if found.refused:
            raise ProduceError(
                f"--strict: {found.refused:,} of {log.count:,} events in {named} break the "
                f"contract of source '{source.name if source else ''}', nothing sent: "
                + "; ".join(f"event #{i}: {why}" for i, why in found.examples)
            )
        if log.non_finite:
            raise ProduceError(
                f"--strict: {log.non_finite:,} float values of {named} are NaN or infinite, "
                "which JSON cannot carry (they would be sent as null); nothing sent"
            )
        check = None  # checked already
    ensure_topics(server, {topic: partitions, topic + DLQ_SUFFIX: 1})
    with progress_bar(console, f"produce {topic}") as bar:
        bar.disable = json  # stdout is the JSON document only
        task = bar.add_task("events", total=log.count)
        report = produce_messages(
            log.messages(),
            topic,
            server,
            rate=rate or None,
            check=check,
            progress=lambda n: bar.update(task, completed=n),
        )
    refused = report.check.refused if report.check is not None else (0 if strict else None)
    if json:
        print_json(
            {
                "events": report.sent,
                "failed": report.failed,
                "topic": topic,
                "partitions": report.partitions,
                "seconds": round(report.seconds, 3),
                "events_per_second": round(report.rate, 1),
                "key": key,
                "format": log.format,
                "contract_refused": refused,
                "contract_examples": [
                    {"event": i, "reason": why}
                    for i, why in (report.check.examples if report.check else [])
                ],
                "non_finite_as_null": log.non_finite,
                "files": len(files),
            }
        )
    else:
        several = "" if single else f" ({len(files):,} files)"
        console.print(
            f"sent {report.sent:,} events from {escape(typed_and_resolved(project, events))}"
            f"{several} to topic "
            f"[bold]{escape(topic)}[/] ({report.partitions} partitions, keyed by "
            f"{escape(key)}) in {report.seconds:.1f}s ({report.rate:,.0f} events/s)"
        )
        if report.check is not None and report.check.refused:
            console.print(
                f"[yellow]{report.check.refused:,} of them break the contract[/]: the stream "
                f"worker will dead-letter them to {escape(topic + DLQ_SUFFIX)} "
                f"(`featurepipe dlq list --topic {escape(topic)}`): "
                + escape("; ".join(f"event #{i}: {why}" for i, why in report.check.examples[:3]))
            )
        elif source is None:
            console.print(f"no view reads topic {escape(topic)}: events not checked")
        if log.non_finite:
            console.print(
                f"[yellow]{log.non_finite:,} float values are NaN or infinite[/]: JSON cannot "
                "carry them, they were sent as null"
            )
    if report.failed:
        raise ProduceError(
            f"{report.failed:,} of {report.sent + report.failed:,} events were not delivered to "
            f"{topic}: {report.first_error}"
        )


@dataclass
class _Logs:
    """The event logs of several files, sent one after the other (file order)."""

    parts: list[EventLog]

    @property
    def count(self) -> int:
        return sum(p.count for p in self.parts)

    @property
    def non_finite(self) -> int:
        return sum(p.non_finite for p in self.parts)

    @property
    def format(self) -> str:
        return self.parts[0].format if self.parts else "parquet"

    def messages(self) -> Iterator[Message]:
        return itertools.chain.from_iterable(p.messages() for p in self.parts)


def _read_logs(
    files: list[Path], key: str, source: Source | None, limit: int | None, shown: str | None
) -> _Logs:
    """The event logs of ``files``, the first ``limit`` events in all; errors about a single
    file name it as the user typed it (``shown``: quoted, with where it resolves)."""
    from featurepipe.stream.produce import ProduceError, read_event_log

    parts: list[EventLog] = []
    for file in files:
        left = None if limit is None else limit - sum(p.count for p in parts)
        if left == 0:
            break
        try:
            columns = tuple(key.split(",")) if "," in key else key
            parts.append(read_event_log(file, columns, source=source, limit=left))
        except ProduceError as e:
            if shown is None:
                raise
            raise ProduceError(str(e).replace(f"'{file}'", shown)) from None
    return _Logs(parts)


# -- dlq -------------------------------------------------------------------------------------
dlq_app = typer.Typer(
    help="Dead letters: the messages the stream worker could not apply, in <topic>.dlq, with "
    "the reason in their headers.",
    no_args_is_help=True,
)
app.add_typer(dlq_app, name="dlq")

DlqTopicOpt = Annotated[
    str | None,
    typer.Option(
        "--topic", help="The topic whose dead letters these are (or its <topic>.dlq itself)."
    ),
]
ReasonOpt = Annotated[
    str | None,
    typer.Option(
        help="Only dead letters whose category is this, or whose reason contains it (ignoring "
        "case), e.g. 'invalid field amount' or 'in the future'."
    ),
]


def _dlq_topics(
    project: Project, topic: str | None, view: str | None, *, several: bool
) -> list[str]:
    from featurepipe.stream.dlq import dlq_topic

    if topic is not None:
        return [dlq_topic(topic)]
    if view is not None:
        return [dlq_topic(_view_topic(project, view)[0])]
    if several:
        topics = sorted(_stream_views(project))
        if not topics:
            raise FeaturepipeError("no feature view has a KafkaSource: pass --topic")
        return [dlq_topic(t) for t in topics]
    return [dlq_topic(_only_topic(project, "whose dead letters"))]


def _unread_topic(project: Project, topic: str | None) -> str | None:
    """When ``--topic`` names a topic no view reads: a sentence saying so and naming the topics
    the views read; None when a view reads it, or without --topic or definitions to ask."""
    from featurepipe.stream.dead_letters import DLQ_SUFFIX

    if topic is None or not project.definitions.exists():
        return None
    base = topic.removesuffix(DLQ_SUFFIX)
    d = load_defs(project, fitting=True)  # the topics do not depend on fitted artifacts
    read = sorted({v.source.stream.topic for v in d.views.values() if v.source.stream})
    if base in read:
        return None
    listed = ", ".join(f"'{t}'" for t in read) if read else "none (no view has a KafkaSource)"
    return f"no view reads topic '{base}' (the views read: {listed})"


def _broker(bootstrap: str | None, purpose: str) -> str:
    from featurepipe.settings import kafka_bootstrap
    from featurepipe.stream.kafka_conn import require_broker

    server = kafka_bootstrap(bootstrap)
    require_broker(server, purpose)
    return server


def _pos(x: tuple[int, int] | None) -> str:
    return "" if x is None else f"{x[0]}/{x[1]}"


@dlq_app.command("list")
def dlq_list(
    topic: DlqTopicOpt = None,
    view: TopicViewOpt = None,
    bootstrap: BootstrapOpt = None,
    repo: RepoOpt = None,
    defs: DefsOpt = None,
    json: JsonOpt = False,
) -> None:
    """Count dead letters by category, with the first and last partition/offset of each and how
    many were replayed (every stream topic of the definitions unless --topic or --view)."""
    quiet_kafka_logging()
    from featurepipe.stream.dlq import summarize

    project = project_for(repo, defs, definitions=topic is None)  # --topic: none needed
    topics = _dlq_topics(project, topic, view, several=True)
    unread = _unread_topic(project, topic) if view is None else None
    server = _broker(bootstrap, "dlq list")
    summaries = [summarize(server, t) for t in topics]
    if unread is not None and not summaries[0].exists:
        raise FeaturepipeError(f"{unread}, and {summaries[0].topic} does not exist")
    if json:
        print_json([s.to_json() for s in summaries])
        return
    if unread is not None:
        console.print(f"[yellow]note:[/] {escape(unread)}; its dead-letter topic exists:")
    for s in summaries:
        if not s.exists:
            console.print(f"{escape(s.topic)}: no dead letters (the topic does not exist yet)")
            continue
        parts = ", ".join(f"partition {p}: {a}..{b}" for p, (a, b) in sorted(s.partitions.items()))
        out = Table(
            title=f"{s.topic}: {s.letters:,} dead letters"
            + (f" ({parts})" if parts else "")
            + "; first and last of each category as partition/offset"
        )
        out.add_column("category", overflow="fold")
        for header in ("dead letters", "replayed", "not replayable", "first", "last"):
            out.add_column(header, justify="right", overflow="fold")
        for c in sorted(s.categories.values(), key=lambda c: (-c.count, c.category)):
            out.add_row(
                escape(c.category),
                f"{c.count:,}",
                f"{c.replayed:,}",
                f"{c.not_replayable:,}",
                _pos(c.first),
                _pos(c.last),
            )
        console.print(out)
        for g in s.gaps:
            console.print(f"[yellow]warning:[/] {escape(str(g))}")


@dlq_app.command("show")
def dlq_show(
    topic: DlqTopicOpt = None,
    view: TopicViewOpt = None,
    reason: ReasonOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many dead letters.")] = 20,
    max_chars: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Show at most this many characters of each payload, saying how many were cut "
            "(default: the whole payload; --json always has it whole).",
        ),
    ] = None,
    bootstrap: BootstrapOpt = None,
    repo: RepoOpt = None,
    defs: DefsOpt = None,
    json: JsonOpt = False,
) -> None:
    """Dead letters (oldest first): payload, key, reason and category, where the original was,
    whether it was cut to fit and whether it was replayed."""
    quiet_kafka_logging()
    from featurepipe.stream.dlq import show

    project = project_for(repo, defs, definitions=topic is None)  # --topic: none needed
    (dlq,) = _dlq_topics(project, topic, view, several=False)
    unread = _unread_topic(project, topic) if view is None else None
    server = _broker(bootstrap, "dlq show")
    shown = show(server, dlq, reason=reason, limit=limit)
    if unread is not None and not shown.exists:
        raise FeaturepipeError(f"{unread}, and {dlq} does not exist")
    if json:
        print_json(
            {
                "topic": dlq,
                "matched": shown.matched,
                "letters": [x.to_json(replayed=r) for x, r in shown.letters],
                "unread": [str(g) for g in shown.gaps],
            }
        )
        return
    if unread is not None:
        console.print(f"[yellow]note:[/] {escape(unread)}; its dead-letter topic exists:")
    if not shown.exists:
        console.print(f"{escape(dlq)}: no dead letters (the topic does not exist yet)")
        return
    console.print(
        f"[bold]{escape(dlq)}[/]: {len(shown.letters):,} of {shown.matched:,} dead letters"
        + (f" matching {escape(repr(reason))}" if reason else "")
        + (" (oldest first)" if shown.letters else "")
    )
    # one block of "field: value" lines per dead letter: the payload gets the whole width
    for x, replayed in shown.letters:
        console.print()
        console.print(
            f"[bold]{x.partition}/{x.offset}[/] (partition/offset)"
            + (" [green]replayed[/]" if replayed else "")
        )
        key_text = "(none)" if x.key is None else x.key.decode("utf-8", errors="replace")
        for label, value in (
            ("key", key_text),
            ("category", x.category),
            ("reason", x.reason),
            ("original", x.source or "(unknown)"),
            ("payload", _payload(x, max_chars)),
        ):
            console.print(f"  {label + ':':<10}{escape(value)}", soft_wrap=True)
    for g in shown.gaps:
        console.print(f"[yellow]warning:[/] {escape(str(g))}")


def _payload(letter: Letter, max_chars: int | None) -> str:
    """A dead letter's payload as text: whole, or its first ``max_chars`` characters and how
    many more there are; and whether the dead letter holds less than the original."""
    text = letter.to_json()["value"]
    if text is None:
        payload = "(no value)"
    elif max_chars is not None and len(text) > max_chars:
        payload = f"{text[:max_chars]}… (+{len(text) - max_chars:,} chars)"
    else:
        payload = text
    if letter.truncated:
        payload += (
            f" [cut to fit the dead-letter topic: {len(letter.value or b''):,} of "
            f"{letter.original_size or 0:,} bytes kept]"
        )
    return str(payload)


REPLAY_HELP = (
    "Send dead letters again to the topic each came from, keyed as it was (after the producer "
    "or the contract was fixed), each at most once.\n\n"
    "Replays are recorded in <topic>.dlq.replays: a dead letter a replay sent (or one it "
    "matched but could not send: cut to fit the dead-letter topic, or without a value) is never "
    "sent again, whatever --reason later runs use. An interrupted replay is completed by the "
    "next one, which sends only what the broker does not have yet. Run one replay of a topic at "
    "a time. The worker dead-letters a replayed message again if it still breaks the contract "
    "(a new dead letter, which a later replay sends again)."
)


@dlq_app.command("replay", help=REPLAY_HELP)
def dlq_replay(
    topic: DlqTopicOpt = None,
    view: TopicViewOpt = None,
    reason: ReasonOpt = None,
    bootstrap: BootstrapOpt = None,
    repo: RepoOpt = None,
    defs: DefsOpt = None,
    json: JsonOpt = False,
) -> None:
    """Send dead letters again to the topic each came from, keyed as it was."""
    quiet_kafka_logging()
    from featurepipe.stream.dlq import replay

    project = project_for(repo, defs, definitions=topic is None)  # --topic: none needed
    (dlq,) = _dlq_topics(project, topic, view, several=False)
    server = _broker(bootstrap, "dlq replay")
    with console.status(f"replaying {dlq} ..."):
        r = replay(server, dlq, reason=reason)
    if json:
        print_json(
            {
                "topic": dlq,
                "replayed": r.total,
                "by_category": dict(r.replayed),
                "completed_interrupted": r.resumed,
                "replayed_before": r.already,
                "not_replayable": dict(r.not_replayable),
                "not_matching": r.not_matching,
                "to": sorted(r.targets),
                "seconds": round(r.seconds, 3),
                "unread": [str(g) for g in r.gaps],
            }
        )
        return
    if r.total == 0:
        console.print(f"nothing to replay in {escape(dlq)}: {escape(_nothing_why(r, reason))}")
    else:
        to = ", ".join(sorted(r.targets))
        by = ", ".join(f"{escape(c)}: {n:,}" for c, n in sorted(r.replayed.items()))
        console.print(
            f"replayed {r.total:,} dead letters of {escape(dlq)} to {escape(to)}"
            + (f" ({by})" if by else "")
            + f" in {r.seconds:.1f}s"
        )
    details: list[str] = []
    if r.resumed:
        details.append(f"{r.resumed:,} of them completed an interrupted replay")
    if r.already:
        details.append(f"{r.already:,} replayed before (not sent again)")
    for why, n in r.not_replayable.items():
        details.append(f"{n:,} not replayable: {why}")
    if reason is not None:
        details.append(f"{r.not_matching:,} not matching --reason")
    for d in details:
        console.print(f"  {escape(d)}")
    for g in r.gaps:
        console.print(
            f"[yellow]warning:[/] {escape(str(g))}: the replay stopped before it; run it again"
        )


def _nothing_why(r: ReplayReport, reason: str | None) -> str:
    """Why a replay sent nothing: no dead letters, none matching --reason, or every matching
    one replayed before or not replayable."""
    unsendable = sum(r.not_replayable.values())
    if r.already + unsendable + r.not_matching == 0:
        return "no dead letters"
    if r.already + unsendable == 0:
        return f"none of its {r.not_matching:,} dead letters matches --reason {reason!r}"
    if unsendable == 0:
        matching = "" if reason is None else f"matching --reason {reason!r} "
        return f"all {r.already:,} dead letters {matching}were replayed already"
    return "every one was replayed before or cannot be replayed"
