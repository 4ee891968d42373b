"""Typed messages on a channel: each declared once, as a frozen dataclass.

A protocol built on the channel (the gateway's is gateway/node/protocol.py)
declares every call and notice as a dataclass whose fields are its
arguments, named on the wire by its ``op``; a call names the type of its
answer (``class Acquire(Call[Admitted])``). This module is the rest:

* the wire form, derived from the declarations: a message's fields in the
  order declared, a dataclass inside one as a JSON array of its own fields,
  so no field name crosses the channel (a usage record once per request:
  arrays cost a third of the JSON work of objects); every value is checked
  against its declared type on the way in (:class:`Malformed` otherwise);
* a :class:`Table` per side, message class -> handler, which a
  :class:`Peer` dispatches through;
* the :class:`Peer`, one end of a channel as its owner sees it: calls that
  return the declared answer, notices, leases.

A call whose op no handler of the table takes, or whose arguments do not
fit its declaration, is refused (the caller gets CallFailed) and logged; a
notice of that kind is logged and dropped. Neither reaches a handler, and
neither stops the process.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import operator
import types
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar, cast

from .channel import Answer, CallFailed, Channel, Json, Refused, Reply

log = logging.getLogger("fognode.workers")

T = TypeVar("T")
A = TypeVar("A")


class Malformed(ValueError):
    """A value that does not fit the type its message declares."""


# --- the wire form -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Codec(Generic[T]):
    """A declared type's JSON form, both ways; ``decode`` checks (Malformed)."""

    encode: Callable[[T], Json]
    decode: Callable[[Json], T]
    # Values of exactly these types are their own wire form, both ways: a
    # dataclass passes such fields as they are, without a call per field.
    same: tuple[type, ...] = ()


_codecs: dict[object, Codec[Any]] = {}


def codec(kind: type[T]) -> Codec[T]:
    """The wire form of ``kind``: a dataclass, an enum, or a plain JSON type."""
    return cast(Codec[T], _codec_of(kind))


def _codec_of(form: object) -> Codec[Any]:
    """The codec of a type form (``int``, ``list[str]``, ``X | None``, a
    dataclass...), made once per form."""
    made = _codecs.get(form)
    if made is None:
        made = _codecs[form] = _make(form)
    return made


def _same(value: Any) -> Any:
    return value


# JSON's own types, as they are: exactly these (JSON's true is no integer here).
_PLAIN: dict[object, str] = {
    None: "null",
    type(None): "null",
    bool: "a boolean",
    int: "an integer",
    str: "a string",
}


def _make(form: object) -> Codec[Any]:
    plain = _PLAIN.get(form)
    if plain is not None:
        return _plain(type(None) if form is None else cast(type, form), plain)
    if form is float:
        return Codec(_same, _float, (float,))  # an integer is taken, as a float
    if form is bytes:
        return Codec(bytes.hex, _hex)
    origin, args = typing.get_origin(form), typing.get_args(form)
    if origin in (types.UnionType, typing.Union):
        return _optional(form, args)
    if origin in (list, tuple, Sequence) and args:
        return _sequence(form, origin, args)
    if origin in (dict, Mapping) and args and args[0] is str:
        return _mapping(args[1])
    if isinstance(form, type) and issubclass(form, enum.Enum):
        return _enum(form)
    if isinstance(form, type) and dataclasses.is_dataclass(form):
        return _dataclass(form)
    raise TypeError(f"{form!r} has no wire form")


def _plain(kind: type, what: str) -> Codec[Any]:
    def decode(value: Json) -> Json:
        if type(value) is not kind:
            raise Malformed(f"{_shown(value)} is not {what}")
        return value

    return Codec(_same, decode, (kind,))


def _float(value: Json) -> float:
    if type(value) not in (int, float):
        raise Malformed(f"{_shown(value)} is not a number")
    return float(cast(float, value))


def _hex(value: Json) -> bytes:
    if type(value) is not str:
        raise Malformed(f"{_shown(value)} is not hexadecimal bytes")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise Malformed(f"{_shown(value)} is not hexadecimal bytes") from None


def _optional(form: object, args: tuple[object, ...]) -> Codec[Any]:
    present = [a for a in args if a is not type(None)]
    if len(present) != 1 or len(args) != 2:
        raise TypeError(f"{form}: of unions only X | None has a wire form")
    inner = _codec_of(present[0])

    def encode(value: Any) -> Json:
        return None if value is None else inner.encode(value)

    def decode(value: Json) -> Any:
        return None if value is None else inner.decode(value)

    return Codec(encode, decode, (*inner.same, type(None)) if inner.same else ())


def _sequence(form: object, origin: object, args: tuple[object, ...]) -> Codec[Any]:
    if origin is tuple and (len(args) != 2 or args[1] is not Ellipsis):
        raise TypeError(f"{form}: only tuple[X, ...] has a wire form")
    item, build = args[0], list if origin is list else tuple
    inner = _codec_of(item)

    def encode(values: Any) -> Json:
        return [inner.encode(v) for v in values]

    def decode(value: Json) -> Any:
        if type(value) is not list:
            raise Malformed(f"{_shown(value)} is not a list")
        return build([inner.decode(v) for v in value])

    return Codec(encode, decode)


def _mapping(item: object) -> Codec[Any]:
    inner = _codec_of(item)

    def encode(values: Any) -> Json:
        return {str(k): inner.encode(v) for k, v in values.items()}

    def decode(value: Json) -> Any:
        if type(value) is not dict:
            raise Malformed(f"{_shown(value)} is not an object")
        return {k: inner.decode(v) for k, v in value.items()}

    return Codec(encode, decode)


def _enum(kind: type[enum.Enum]) -> Codec[Any]:
    members = {member.value: member for member in kind}

    def encode(value: enum.Enum) -> Json:
        return cast(Json, value.value)

    def decode(value: Json) -> enum.Enum:
        member = members.get(value) if isinstance(value, str | int) else None
        if member is None:
            raise Malformed(f"{_shown(value)} is no {kind.__name__}")
        return member

    return Codec(encode, decode)


def _dataclass(kind: type[Any]) -> Codec[Any]:
    """An array of the fields given to the constructor, in the order declared.

    Once per request in each direction (an acquire, a usage record), so the
    fields that are their own wire form pass as they are: one type check
    each on the way in, none on the way out."""
    hints = typing.get_type_hints(kind)
    if any(f.kw_only for f in dataclasses.fields(kind)):
        raise TypeError(f"{kind.__name__}: keyword-only fields have no place in an array")
    fields = [f.name for f in dataclasses.fields(kind) if f.init]
    codecs = [_codec_of(hints[name]) for name in fields]
    count = len(fields)
    steps = [(c.same, c.decode) for c in codecs]
    converted = [(i, c.encode) for i, c in enumerate(codecs) if not c.same]

    values_of = _attributes(fields)

    def encode(value: Any) -> Json:
        values = values_of(value)
        for i, to_wire in converted:
            values[i] = to_wire(values[i])
        return values

    def decode(value: Json) -> Any:
        if type(value) is not list or len(value) != count:
            raise Malformed(f"{_shown(value)} is not {kind.__name__} ({count} values)")
        arguments = [
            v if type(v) in same else from_wire(v)
            for (same, from_wire), v in zip(steps, value, strict=True)
        ]
        try:
            return kind(*arguments)
        except (TypeError, ValueError) as exc:  # its own checks (__post_init__)
            raise Malformed(f"not a {kind.__name__}: {exc}") from None

    return Codec(encode, decode)


def _attributes(names: list[str]) -> Callable[[Any], list[Any]]:
    """The named attributes of a value, in one call (attrgetter's tuple)."""
    if len(names) < 2:  # attrgetter of one name gives the value, not a tuple

        def few(value: Any) -> list[Any]:
            return [getattr(value, name) for name in names]

        return few
    get = operator.attrgetter(*names)

    def values_of(value: Any) -> list[Any]:
        return list(get(value))

    return values_of


def _shown(value: Json) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- messages ----------------------------------------------------------------------
class Message:
    """A call or a notice. Subclasses are frozen dataclasses; ``op`` names
    the message on the wire."""

    __slots__ = ()
    op: ClassVar[str]


class Notice(Message):
    """A message that wants no answer."""

    __slots__ = ()


class Call(Message, Generic[A]):
    """A message that wants an answer of type ``A``; its handler answers
    with :meth:`answer`, or :meth:`lease` to hold something for the caller
    until it is done with it."""

    __slots__ = ()

    def answer(self, value: A) -> Reply:
        return Reply([answer_codec(type(self)).encode(value)])

    def lease(self, value: A, release: Callable[[], None]) -> Reply:
        """The answer, and what to call once the caller is done with it, its
        call was given up, or the channel dropped (exactly once)."""
        return Reply([answer_codec(type(self)).encode(value)], release)


def answer_type(kind: type[Call[Any]]) -> object:
    """The ``A`` of ``class X(Call[A])``."""
    for klass in kind.__mro__:
        for base in klass.__dict__.get("__orig_bases__", ()):
            if typing.get_origin(base) is Call:
                return typing.get_args(base)[0]
    raise TypeError(f"{kind.__name__} does not say what it answers: Call[...]")


_answer_codecs: dict[type[Call[Any]], Codec[Any]] = {}


def answer_codec(kind: type[Call[Any]]) -> Codec[Any]:
    made = _answer_codecs.get(kind)
    if made is None:
        made = _answer_codecs[kind] = _codec_of(answer_type(kind))
    return made


def encode(message: Message) -> list[Json]:
    """A message's fields as the values of a channel frame."""
    return cast(list[Json], _codec_of(type(message)).encode(message))


def decode(kind: type[Message], values: list[Json]) -> Message:
    """The message ``kind`` from a frame's values (Malformed if they do not fit)."""
    return cast(Message, _codec_of(kind).decode(values))


# --- dispatch ----------------------------------------------------------------------
C = TypeVar("C", bound=Call[Any])
N = TypeVar("N", bound=Notice)
NowHandler = Callable[[Any], Reply | None]


@dataclass(frozen=True, slots=True)
class _Route:
    kind: type[Message]
    handler: Callable[[Any], Any] | None  # None: a call always answered by ``now``
    now: NowHandler | None = None  # calls only: tried first, in the step that reads it


class Table:
    """One side's handlers: which function takes each message it accepts."""

    def __init__(self) -> None:
        self._calls: dict[str, _Route] = {}
        self._notices: dict[str, _Route] = {}

    def call(
        self,
        kind: type[C],
        handler: Callable[[C], Awaitable[Reply]],
        *,
        now: Callable[[C], Reply | None] | None = None,
    ) -> Table:
        """``handler`` answers ``kind`` (in a task of its own); ``now``, when
        given, is tried first and answers in the step that reads the call, or
        returns None to leave it to ``handler``."""
        answer_codec(kind)  # a call that cannot say what it answers fails here, at start
        self._add(self._calls, _Route(kind, handler, now))
        return self

    def immediate(self, kind: type[C], handler: Callable[[C], Reply]) -> Table:
        """``handler`` answers ``kind`` in the step that reads it, always (no
        task, no await: an answer that is there or not at once)."""
        answer_codec(kind)
        self._add(self._calls, _Route(kind, None, handler))
        return self

    def notice(self, kind: type[N], handler: Callable[[N], None]) -> Table:
        self._add(self._notices, _Route(kind, handler))
        return self

    def accepts(self) -> frozenset[str]:
        """The ops of every message this side takes."""
        return frozenset(self._calls) | frozenset(self._notices)

    @staticmethod
    def _add(routes: dict[str, _Route], route: _Route) -> None:
        _codec_of(route.kind)  # a field without a wire form fails here, at start
        if route.kind.op in routes:
            raise ValueError(f"two handlers of {route.kind.op!r}")
        routes[route.kind.op] = route

    def _route(self, routes: dict[str, _Route], op: str, values: list[Json]) -> tuple[_Route, Any]:
        route = routes.get(op)
        if route is None:
            raise Refused(f"no such message here: {op!r}")
        try:
            return route, decode(route.kind, values)
        except Malformed as exc:
            raise Refused(f"{op!r} does not fit its declaration: {exc}") from None

    async def serve(self, op: str, values: list[Json]) -> Reply:
        route, message = self._route(self._calls, op, values)
        if route.handler is None:  # answered at once, or refused, by serve_now
            assert route.now is not None
            return cast(Reply, route.now(message))
        return cast(Reply, await route.handler(message))

    def serve_now(self, op: str, values: list[Json]) -> Reply | None:
        route = self._calls.get(op)
        if route is None or route.now is None:
            return None  # refused (or answered) by serve
        _, message = self._route(self._calls, op, values)
        return route.now(message)

    def notice_received(self, op: str, values: list[Json]) -> None:
        try:
            route, message = self._route(self._notices, op, values)
            assert route.handler is not None
            route.handler(message)
        except Refused as exc:
            log.warning("dropped a notice: %s", exc)


@dataclass(frozen=True, slots=True)
class Leased(Generic[T]):
    """An answer that holds something for this side until :meth:`Peer.done`."""

    value: T
    id: int


class Peer:
    """One end of a channel, typed: it calls and tells the other side what
    the protocol declares, and serves what arrives through its table."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.channel = Channel(
            serve=table.serve, notice=table.notice_received, serve_now=table.serve_now
        )

    async def call(self, message: Call[A]) -> A:
        """The answer; ChannelClosed when the other side is gone, CallFailed
        when it could not answer (its handler raised, or refused the call)."""
        return (await self.lease(message)).value

    async def lease(self, message: Call[A]) -> Leased[A]:
        """The answer, and the call's id, to give back what it holds with
        :meth:`done` (if the answer leased anything: a handler's choice)."""
        answer = await self.channel.call(message.op, *encode(message))
        try:
            return Leased(_answer(type(message), answer), answer.id)
        except CallFailed:
            self.channel.done(answer.id)  # unusable: whatever it held goes back
            raise

    def done(self, leased: Leased[Any]) -> None:
        self.channel.done(leased.id)

    def notify(self, message: Notice) -> None:
        self.channel.notify(message.op, *encode(message))

    def close(self) -> None:
        self.channel.close()


def _answer(kind: type[Call[A]], answer: Answer) -> A:
    try:
        if len(answer.values) != 1:
            raise Malformed(f"{len(answer.values)} values, not one")
        return cast(A, answer_codec(kind).decode(answer.values[0]))
    except Malformed as exc:
        log.warning("the answer to %r does not fit its declaration: %s", kind.op, exc)
        raise CallFailed(f"the answer to {kind.op!r} does not fit its declaration") from None
