"""A DicomEdit 6 compatible subset: the parser and the executor over a pydicom Dataset.

Sites migrating from XNAT bring their anonymization scripts; this runs the subset in
CONTRACT section 2 with XNAT's results. Scripts are parsed once, when they are set, and a script
outside the subset is refused there with the line and column of the fault.

Beyond XNAT, for a privacy officer's peace of mind: deletions (``-``, ``removeAllPrivateTags``)
reach into nested sequences, and every UID a script hashes is replaced wherever it occurs in
the file (references in sequences, the file meta), so no original UID survives.
"""

from __future__ import annotations

import functools
import hashlib
import re
import struct
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.values import convert_SQ

from .dicom import raw_text

SUPPORTED_VERSIONS = ("6.1", "6.0", "6.2", "6.3", "6.4", "6.5", "6.6")
BUILTIN_VARIABLES = ("project", "subject", "session")
_SOP_INSTANCE_UID = Tag(0x0008, 0x0018)
_NUMERIC_VRS = {"US", "UL", "SS", "SL", "UV", "SV", "FL", "FD"}


class ScriptSyntaxError(ValueError):
    """A script outside the subset; ``line`` and ``column`` are 1-based."""

    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(f"line {line}, column {column}: {message}")
        self.line = line
        self.column = column
        self.message = message


# --------------------------------------------------------------------------- tokens
@dataclass(frozen=True)
class _Token:
    kind: str  # STRING, TAG, IDENT, OP, END
    text: str
    line: int
    column: int
    value: Any = None


_TAG = re.compile(r"\(([0-9A-Fa-fXx]{4}),([0-9A-Fa-fXx]{4})\)")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPS = (":=", "?=", "!=", "!~", "=", "~", "?", ":", "-", "[", "]", ",")


def _tokenize_line(text: str, line: int) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        col = i + 1
        if ch in " \t\r":
            i += 1
        elif text.startswith("//", i):
            break
        elif ch == '"':
            j, out = i + 1, []
            while j < len(text) and text[j] != '"':
                if text[j] == "\\" and j + 1 < len(text):
                    j += 1
                out.append(text[j])
                j += 1
            if j >= len(text):
                raise ScriptSyntaxError(line, col, "unterminated string")
            tokens.append(_Token("STRING", text[i : j + 1], line, col, "".join(out)))
            i = j + 1
        elif ch == "(":
            path: list[tuple[str, str]] = []
            j = i
            while True:
                m = _TAG.match(text, j)
                if not m:
                    raise ScriptSyntaxError(line, j + 1, "bad tag: expected (gggg,eeee) in hex")
                path.append((m.group(1).upper(), m.group(2).upper()))
                j = m.end()
                if j < len(text) and text[j] == "/" and j + 1 < len(text) and text[j + 1] == "(":
                    j += 1
                    continue
                break
            tokens.append(_Token("TAG", text[i:j], line, col, tuple(path)))
            i = j
        elif m := _IDENT.match(text, i):
            tokens.append(_Token("IDENT", m.group(0), line, col))
            i = m.end()
        else:
            for op in _OPS:
                if text.startswith(op, i):
                    tokens.append(_Token("OP", op, line, col))
                    i += len(op)
                    break
            else:
                raise ScriptSyntaxError(line, col, f"unexpected character {ch!r}")
    tokens.append(_Token("END", "", line, len(text) + 1))
    return tokens


# --------------------------------------------------------------------------- AST
@dataclass(frozen=True)
class TagPath:
    """``(gggg,eeee)`` or a path through sequences; ``X`` digits are wildcards."""

    parts: tuple[tuple[str, str], ...]

    @property
    def has_wildcard(self) -> bool:
        return any("X" in g + e for g, e in self.parts)

    @property
    def last(self) -> BaseTag:
        g, e = self.parts[-1]
        return Tag(int(g, 16), int(e, 16))

    def __str__(self) -> str:
        return "/".join(f"({g},{e})" for g, e in self.parts)

    @functools.cached_property
    def masks(self) -> tuple[tuple[int, int], ...]:
        """Each part as ``(mask, value)``: a tag ``t`` matches it when ``t & mask == value``
        (``(60XX,3000)`` is ``(0xFF00FFFF, 0x60003000)``)."""
        out = []
        for group, element in self.parts:
            digits = group + element
            mask = int("".join("0" if digit == "X" else "F" for digit in digits), 16)
            out.append((mask, int(digits.replace("X", "0"), 16)))
        return tuple(out)

    def matches(self, tag: BaseTag | int, index: int = -1) -> bool:
        mask, value = self.masks[index]
        return int(tag) & mask == value


@dataclass(frozen=True)
class Value:
    kind: str  # str, var, tag, call
    text: str = ""
    tag: TagPath | None = None
    func: str = ""
    args: tuple[Value, ...] = ()


@dataclass(frozen=True)
class Statement:
    kind: str  # set, setif, delete, assign, removeprivate, retain, cond, noop
    target: TagPath | None = None
    name: str = ""
    value: Value | None = None
    left: Value | None = None
    op: str = ""
    right: Value | None = None
    then: Statement | None = None
    otherwise: Statement | None = None
    retain: tuple[TagPath, ...] = ()
    line: int = 0


_FUNCTIONS: dict[str, int | None] = {
    "hashUID": 1,
    "lowercase": 1,
    "uppercase": 1,
    "replace": 3,
    "concatenate": None,
}


class _Parser:
    def __init__(self, tokens: list[_Token], variables: set[str]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.variables = variables

    @property
    def tok(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        t = self.tokens[self.pos]
        self.pos += 1
        return t

    def error(self, message: str, tok: _Token | None = None) -> ScriptSyntaxError:
        t = tok or self.tok
        return ScriptSyntaxError(t.line, t.column, message)

    def expect_op(self, op: str) -> _Token:
        if self.tok.kind != "OP" or self.tok.text != op:
            found = self.tok.text or "end of line"
            raise self.error(f"expected {op!r}, found {found!r}")
        return self.take()

    def statement(self) -> Statement:
        t = self.tok
        if t.kind == "OP" and t.text == "-":
            self.take()
            if self.tok.kind != "TAG":
                raise self.error("expected a tag to delete after '-'")
            return Statement("delete", target=TagPath(self.take().value), line=t.line)
        if t.kind == "IDENT" and t.text == "removeAllPrivateTags":
            self.take()
            return Statement("removeprivate", line=t.line)
        if t.kind == "IDENT" and t.text == "retainPrivateTags":
            self.take()
            self.expect_op("[")
            tags: list[TagPath] = []
            while True:
                if self.tok.kind != "TAG":
                    raise self.error("expected a tag in retainPrivateTags[...]")
                tags.append(TagPath(self.take().value))
                if self.tok.kind == "OP" and self.tok.text == ",":
                    self.take()
                    continue
                self.expect_op("]")
                break
            return Statement("retain", retain=tuple(tags), line=t.line)
        if t.kind == "TAG" and self._next_is(":=", "?="):
            target = TagPath(self.take().value)
            op = self.take().text
            if target.has_wildcard:
                raise self.error("a tag with X wildcards can only be deleted", t)
            self._check_settable(target, t)
            value = self.value()
            return Statement(
                "set" if op == ":=" else "setif", target=target, value=value, line=t.line
            )
        if t.kind == "IDENT" and self._next_is(":="):
            name = self.take().text
            self.take()
            value = self.value()
            self.variables.add(name)
            return Statement("assign", name=name, value=value, line=t.line)
        left = self.value()
        if self.tok.kind == "OP" and self.tok.text in ("=", "!=", "~", "!~"):
            op = self.take().text
            right_tok = self.tok
            right = self.value()
            if op in ("~", "!~") and right.kind == "str":
                try:
                    re.compile(right.text)
                except re.error as exc:
                    raise self.error(f"invalid regular expression: {exc}", right_tok) from None
            self.expect_op("?")
            if self.tok.kind == "END":
                raise self.error("expected an action after '?'")
            then = self.statement()
            otherwise = None
            if self.tok.kind == "OP" and self.tok.text == ":":
                self.take()
                if self.tok.kind == "END":
                    raise self.error("expected an action after ':'")
                otherwise = self.statement()
            return Statement(
                "cond", left=left, op=op, right=right, then=then, otherwise=otherwise, line=t.line
            )
        found = self.tok.text or "end of line"
        raise self.error(f"expected ':=', '?=' or a comparison (= != ~ !~), found {found!r}")

    def _next_is(self, *ops: str) -> bool:
        nxt = self.tokens[self.pos + 1]
        return nxt.kind == "OP" and nxt.text in ops

    def _check_settable(self, target: TagPath, tok: _Token) -> None:
        tag = target.last
        if tag.is_private:
            raise self.error(f"setting private tag {target} is not supported", tok)
        try:
            dictionary_VR(tag)
        except KeyError:
            raise self.error(f"unknown tag {target}", tok) from None

    def value(self) -> Value:
        t = self.tok
        if t.kind == "STRING":
            self.take()
            return Value("str", text=t.value)
        if t.kind == "TAG":
            self.take()
            return Value("tag", tag=TagPath(t.value))
        if t.kind == "IDENT":
            self.take()
            if self.tok.kind == "OP" and self.tok.text == "[":
                if t.text not in _FUNCTIONS:
                    raise self.error(f"unknown function {t.text!r}", t)
                self.take()
                args: list[Value] = []
                while not (self.tok.kind == "OP" and self.tok.text == "]"):
                    args.append(self.value())
                    if self.tok.kind == "OP" and self.tok.text == ",":
                        self.take()
                    elif not (self.tok.kind == "OP" and self.tok.text == "]"):
                        raise self.error("expected ',' or ']'")
                self.take()
                arity = _FUNCTIONS[t.text]
                if arity is not None and len(args) != arity:
                    raise self.error(f"{t.text} takes {arity} argument(s), got {len(args)}", t)
                return Value("call", func=t.text, args=tuple(args))
            if t.text not in self.variables:
                raise self.error(f"unknown variable {t.text!r}", t)
            return Value("var", text=t.text)
        found = t.text or "end of line"
        raise self.error(f"expected a value (string, tag, variable or function), found {found!r}")


@dataclass(frozen=True)
class Script:
    """A parsed script; :meth:`apply` runs it over a dataset in place."""

    source: str
    statements: tuple[Statement, ...]
    retained: tuple[TagPath, ...] = field(default=())

    def apply(self, ds: Dataset, variables: Mapping[str, str], *, uid_salt: str = "") -> list[str]:
        """Run over ``ds`` (and its file meta); return the changes, one line each."""
        run = _Run(ds, dict(variables), self.retained, uid_salt)
        for statement in self.statements:
            run.execute(statement)
        run.finish()
        return run.changes

    @functools.cached_property
    def needs_pixel_data(self) -> bool:
        """Whether a tag path of the script names or matches a pixel data element (7FE0,00xx);
        when none does, :meth:`apply` gives the same result on a header read."""
        return any(_names_pixel_data(path) for st in self.statements for path in _paths_of(st))

    @functools.cached_property
    def top_level_tags(self) -> frozenset[int] | None:
        """The tags the script sets or deletes, when it only sets top-level text elements
        named exactly (from text, variables and the string functions), deletes elements
        named exactly and, outside conditions, deletes by wildcards
        (:attr:`top_level_wildcards`); ``None`` when it does anything else.

        Such a script run over a dataset holding only those elements (those of them the file
        has) changes them exactly as it would in the whole file, so long as no deleted tag
        occurs inside a sequence (:mod:`.splice_edit` proves that from the file's bytes) and
        the elements a wildcard matches are left out too. Not so for
        ``removeAllPrivateTags`` (it reaches into sequences), ``hashUID`` (the UID is
        replaced wherever it occurs, even one hashed from text), reading a tag's value (the
        search converts every element, and a malformed one fails the file), a wildcard
        deletion under a condition or one that may match the file meta, the pixel data or an
        item, paths into sequences, private tags named exactly, the file meta, the SOP
        instance UID (the file meta follows it), the character set (it decides how other
        elements are encoded), and set elements whose VR pydicom decides from others.
        """
        plan = self._top_level_plan
        return None if plan is None else plan[0] | plan[1]

    @property
    def top_level_sets(self) -> frozenset[int]:
        """Of :attr:`top_level_tags`, those the script sets (empty when that is ``None``)."""
        plan = self._top_level_plan
        return frozenset() if plan is None else plan[0]

    @property
    def top_level_deletions(self) -> frozenset[int]:
        """Of :attr:`top_level_tags`, those the script deletes (empty when that is ``None``)."""
        plan = self._top_level_plan
        return frozenset() if plan is None else plan[1]

    @property
    def top_level_wildcards(self) -> tuple[TagPath, ...]:
        """The wildcard deletions of a script :attr:`top_level_tags` describes: each deletes
        every element it matches, unconditionally (empty when that is ``None``)."""
        plan = self._top_level_plan
        return () if plan is None else plan[2]

    @functools.cached_property
    def _top_level_plan(
        self,
    ) -> tuple[frozenset[int], frozenset[int], tuple[TagPath, ...]] | None:
        """(the tags set, the tags deleted, the wildcard deletions), or ``None`` (see
        :attr:`top_level_tags`)."""
        set_tags: set[int] = set()
        deleted: set[int] = set()
        wildcards: list[TagPath] = []
        for statement in self.statements:
            target = statement.target
            if statement.kind == "delete" and target is not None and _top_level_wildcard(target):
                wildcards.append(target)
            elif not _top_level_only(statement, set_tags, deleted):
                return None
        return frozenset(set_tags), frozenset(deleted), tuple(wildcards)


def parse_script(text: str) -> Script:
    """Parse a script; :class:`ScriptSyntaxError` with line and column on any fault."""
    statements: list[Statement] = []
    variables = set(BUILTIN_VARIABLES)
    seen_statement = False
    for number, raw in enumerate(text.splitlines(), start=1):
        tokens = _tokenize_line(raw, number)
        if tokens[0].kind == "END":
            continue
        if tokens[0].kind == "IDENT" and tokens[0].text == "version":
            if seen_statement:
                raise ScriptSyntaxError(number, tokens[0].column, "version must come first")
            if tokens[1].kind != "STRING" or tokens[1].value not in SUPPORTED_VERSIONS:
                t = tokens[1]
                raise ScriptSyntaxError(
                    number, t.column, f'unsupported version {t.text or "missing"}; use "6.1"'
                )
            if tokens[2].kind != "END":
                raise ScriptSyntaxError(number, tokens[2].column, "unexpected text after version")
            continue
        parser = _Parser(tokens, variables)
        statement = parser.statement()
        if parser.tok.kind != "END":
            raise parser.error(f"unexpected {parser.tok.text!r} after the statement")
        statements.append(statement)
        seen_statement = True
    retained = tuple(t for s in statements for t in _retains(s))
    return Script(source=text, statements=tuple(statements), retained=retained)


_PIXEL_DATA_TAGS = (Tag(0x7FE0, 0x0008), Tag(0x7FE0, 0x0009), Tag(0x7FE0, 0x0010))


def _names_pixel_data(path: TagPath) -> bool:
    return any(path.matches(tag, i) for i in range(len(path.parts)) for tag in _PIXEL_DATA_TAGS)


def _paths_of(statement: Statement) -> Iterator[TagPath]:
    """Every tag path a statement reads or writes, conditions and nested values included."""
    if statement.target is not None:
        yield statement.target
    yield from statement.retain
    for value in (statement.value, statement.left, statement.right):
        if value is not None:
            yield from _value_paths(value)
    for branch in (statement.then, statement.otherwise):
        if branch is not None:
            yield from _paths_of(branch)


_TOP_LEVEL_KINDS = frozenset({"set", "setif", "assign", "cond", "noop", "delete"})
#: Tags a top-level-only script may not name (see :attr:`Script.top_level_tags`).
_NOT_PLAIN = frozenset({0x00080005, 0x00080016, 0x00080018})


def _top_level_only(statement: Statement, set_tags: set[int], deleted: set[int]) -> bool:
    """Whether ``statement`` only sets or deletes top-level elements named exactly; adds the
    tags it sets and those it deletes."""
    if statement.kind not in _TOP_LEVEL_KINDS:
        return False
    values = [v for v in (statement.value, statement.left, statement.right) if v is not None]
    if any(_calls_hash(v) or next(_value_paths(v), None) for v in values):
        return False
    if statement.target is not None:
        if statement.kind == "delete":
            tag = _exact_top_level_tag(statement.target)
            if tag is None:
                return False
            deleted.add(tag)
        else:
            tag = _plain_top_level_tag(statement.target)
            if tag is None:
                return False
            set_tags.add(tag)
    branches = (statement.then, statement.otherwise)
    return all(_top_level_only(b, set_tags, deleted) for b in branches if b)


def _calls_hash(value: Value) -> bool:
    return value.func == "hashUID" or any(_calls_hash(a) for a in value.args)


def _exact_top_level_tag(path: TagPath) -> int | None:
    """The tag of a one-part, wildcard-free path to a public data set element, else
    ``None``."""
    if len(path.parts) != 1 or path.has_wildcard:
        return None
    tag = path.last
    if tag.is_private or tag.group <= 0x0002 or tag.element == 0 or tag in _NOT_PLAIN:
        return None
    if tag.group in (0x7FE0, 0xFFFE):
        return None
    return int(tag)


#: Groups a spliced wildcard deletion may not reach: the command and file meta groups, the
#: pixel data's, and the items' and delimiters'.
_UNSPLICED_GROUPS = (0x0000, 0x0001, 0x0002, 0x7FE0, 0xFFFA, 0xFFFC, 0xFFFE)


def _top_level_wildcard(path: TagPath) -> bool:
    """Whether ``path`` is a one-part wildcard that matches no tag of the groups a splice
    leaves to pydicom (which tags it must not match besides, the plan decides)."""
    if len(path.parts) != 1 or not path.has_wildcard:
        return False
    mask, value = path.masks[0]
    return not any(g << 16 & mask == value & 0xFFFF0000 for g in _UNSPLICED_GROUPS)


def _plain_top_level_tag(path: TagPath) -> int | None:
    """The tag of a one-part, wildcard-free path to a public text element, else ``None``."""
    if _exact_top_level_tag(path) is None:
        return None
    tag = path.last
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return int(tag) if vr in _TEXT_VRS else None


#: VRs whose values a script sets as text, encoded the same in every file of a request.
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC",
     "UI", "UR", "UT"}
)  # fmt: skip


def _value_paths(value: Value) -> Iterator[TagPath]:
    if value.tag is not None:
        yield value.tag
    for arg in value.args:
        yield from _value_paths(arg)


def _retains(statement: Statement) -> Iterator[TagPath]:
    if statement.kind == "retain":
        yield from statement.retain


# --------------------------------------------------------------------------- execution
def hash_uid(uid: str, salt: str = "") -> str:
    """XNAT's hashUID: Java's ``UUID.nameUUIDFromBytes`` of the UID, as ``2.25.<integer>``."""
    digest = hashlib.md5((salt + uid).encode("utf-8"), usedforsecurity=False).digest()
    return f"2.25.{uuid.UUID(bytes=digest, version=3).int}"


def _uid_text(elem: DataElement | RawDataElement | None) -> str:
    """A UID element's text, from its bytes while it is unconverted (see :func:`raw_text`)."""
    if isinstance(elem, RawDataElement):
        return raw_text(elem) or ""
    return _text_of(elem)


def _text_of(elem: DataElement | None) -> str:
    if elem is None or elem.value is None:
        return ""
    value = elem.value
    if isinstance(value, MultiValue | list):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


class _Run:
    def __init__(
        self, ds: Dataset, variables: dict[str, str], retained: tuple[TagPath, ...], salt: str
    ) -> None:
        self.ds = ds
        self.variables = variables
        self.retained = retained
        self.salt = salt
        self.hashed: dict[str, str] = {}
        self.changes: list[str] = []
        self.original_sop = _uid_text(ds._dict.get(_SOP_INSTANCE_UID))
        _expand_un_sequences(ds)

    # values
    def evaluate(self, value: Value, item: tuple[TagPath, Dataset] | None = None) -> str:
        """The value as text. ``item`` is (target path, sequence item) while setting inside
        sequences: a tag on the same path then reads from that item, so each item is hashed
        from its own value."""
        if value.kind == "str":
            return value.text
        if value.kind == "var":
            return self.variables.get(value.text, "")
        if value.kind == "tag":
            assert value.tag is not None
            if item is not None and value.tag.parts[:-1] == item[0].parts[:-1]:
                return _text_of(item[1].get(value.tag.last))
            found = self._find(value.tag)
            return _text_of(found[0]) if found else ""
        args = [self.evaluate(a, item) for a in value.args]
        if value.func == "hashUID":
            if not args[0]:
                return ""
            new = hash_uid(args[0], self.salt)
            self.hashed[args[0]] = new
            return new
        if value.func == "lowercase":
            return args[0].lower()
        if value.func == "uppercase":
            return args[0].upper()
        if value.func == "replace":
            return args[0].replace(args[1], args[2])
        return "".join(args)  # concatenate

    def _find(self, path: TagPath) -> list[DataElement]:
        last = len(path.parts) - 1
        return [e for d in self._parents(path) for e in list(d) if path.matches(e.tag, last)]

    def _parents(self, path: TagPath) -> list[Dataset]:
        """The datasets holding the path's last tag: the items of its sequences."""
        datasets: list[Dataset] = [self.ds]
        for i in range(len(path.parts) - 1):
            nxt: list[Dataset] = []
            for d in datasets:
                for elem in d:
                    if path.matches(elem.tag, i) and elem.VR == "SQ":
                        nxt.extend(elem.value)
            datasets = nxt
        return datasets

    # statements
    def execute(self, st: Statement) -> None:
        handler: Callable[[Statement], None] = getattr(self, f"_do_{st.kind}")
        handler(st)

    def _do_assign(self, st: Statement) -> None:
        assert st.value is not None
        self.variables[st.name] = self.evaluate(st.value)

    def _do_set(self, st: Statement, only_if_present: bool = False) -> None:
        assert st.target is not None and st.value is not None
        tag = st.target.last
        nested = len(st.target.parts) > 1
        value = "" if nested else self.evaluate(st.value)
        for parent in self._parents(st.target):
            old = parent.get(tag)
            if old is None and only_if_present:
                continue
            if nested:
                value = self.evaluate(st.value, (st.target, parent))
            self._set(parent, tag, value, old)

    def _do_setif(self, st: Statement) -> None:
        self._do_set(st, only_if_present=True)

    def _set(self, parent: Dataset, tag: BaseTag, value: str, old: DataElement | None) -> None:
        vr = old.VR if old is not None else dictionary_VR(tag)
        converted: Any = value
        if vr in _NUMERIC_VRS:
            converted = int(value) if vr[-1] != "D" and vr != "FL" else float(value)
        elif "\\" in value and vr not in ("LT", "ST", "UT"):
            converted = value.split("\\")
        before = _text_of(old)
        if old is not None:
            old.value = converted
        else:
            parent.add_new(tag, vr, converted)
        if before != value or old is None:
            self.changes.append(f"{_label(tag)}: {before!r} -> {value!r}")

    def _do_delete(self, st: Statement) -> None:
        assert st.target is not None
        if len(st.target.parts) == 1:
            self._delete_everywhere(self.ds, st.target)
            return
        tag_index = len(st.target.parts) - 1
        for parent in self._parents(st.target):
            for elem in list(parent):
                if st.target.matches(elem.tag, tag_index):
                    del parent[elem.tag]
                    self.changes.append(f"{_label(elem.tag)}: deleted")

    def _delete_everywhere(self, ds: Dataset, target: TagPath) -> None:
        """Delete every element ``target`` matches, inside sequences too. An element still
        raw that cannot hold elements (:func:`may_nest`) or whose bytes hold no tag
        ``target`` matches (:func:`_may_hold`) is left unconverted: nothing inside it can be
        the target (converting every value was most of a rewrite's time, could fail the file
        over an element the script never named, and re-encodes values the splice copies).
        Of one that may, the bytes decide, not how the value starts: pydicom reads a sequence
        whose first item is not tagged as one, and a UN value pydicom gives its dictionary's
        VR (a private one's, say) is read as a sequence when the target is inside."""
        for tag in sorted(ds._dict):
            if target.matches(tag):
                del ds[tag]
                self.changes.append(f"{_label(tag)}: deleted")
                continue
            found = ds._dict[tag]
            raw = isinstance(found, RawDataElement)
            if isinstance(found, RawDataElement) and not _may_hold_element(found, target):
                continue
            elem = ds[tag]
            if elem.VR == "SQ":
                for item in elem.value:
                    self._delete_everywhere(item, target)
            elif isinstance(elem.value, bytes) and (raw or elem.VR == "UN"):
                self._delete_in_un(elem, target)  # (pydicom may give UN its dictionary VR)

    def _delete_in_un(self, elem: DataElement, target: TagPath) -> None:
        """A UN element (or one read as UN and given its dictionary's VR) whose bytes hold a
        tag the target matches may be a sequence whose first item is not tagged as one (so
        :func:`_expand_un_sequences` left it): read as a sequence, it becomes one if the
        target was inside, and its bytes stay as they were if not."""
        if not _may_hold_bytes(elem.value, target, little_endian=True):
            return
        sequence = _un_as_sequence(elem.value)
        if sequence is None:
            return
        deleted = len(self.changes)
        for item in sequence:
            self._delete_everywhere(item, target)
        if len(self.changes) > deleted:
            elem.VR = "SQ"
            elem.value = sequence

    def _do_removeprivate(self, st: Statement) -> None:
        self._remove_private(self.ds)

    def _remove_private(self, ds: Dataset) -> None:
        keep_blocks = set()
        for elem in ds:
            if elem.tag.is_private and any(r.matches(elem.tag) for r in self.retained):
                keep_blocks.add((elem.tag.group, elem.tag.element >> 8))
        for elem in list(ds):
            tag = elem.tag
            if tag.is_private:
                # A private creator (gggg,00bb) stays when its block bb holds a retained tag.
                creator = 0x10 <= tag.element <= 0xFF and (tag.group, tag.element) in keep_blocks
                if any(r.matches(tag) for r in self.retained) or creator:
                    continue
                del ds[tag]
                self.changes.append(f"{_label(tag)}: deleted (private)")
            elif elem.VR == "SQ":
                for item in elem.value:
                    self._remove_private(item)

    def _do_retain(self, st: Statement) -> None:
        return None  # collected at parse time; applies to removeAllPrivateTags

    def _do_cond(self, st: Statement) -> None:
        assert st.left is not None and st.right is not None
        left, right = self.evaluate(st.left), self.evaluate(st.right)
        if st.op == "=":
            result = left == right
        elif st.op == "!=":
            result = left != right
        elif st.op == "~":
            result = re.fullmatch(right, left) is not None
        else:
            result = re.fullmatch(right, left) is None
        branch = st.then if result else st.otherwise
        if branch is not None:
            self.execute(branch)

    def finish(self) -> None:
        """Map every hashed UID wherever it occurs; keep the file meta in step."""
        if self.hashed:
            _replace_uids(self.ds, self.hashed)
        meta = getattr(self.ds, "file_meta", None)
        sop = _uid_text(self.ds._dict.get(_SOP_INSTANCE_UID))
        if meta is not None and sop and sop != self.original_sop:
            meta.MediaStorageSOPInstanceUID = sop
        elif meta is not None and self.hashed and "MediaStorageSOPInstanceUID" in meta:
            old = str(meta.MediaStorageSOPInstanceUID)
            if old in self.hashed:
                meta.MediaStorageSOPInstanceUID = self.hashed[old]


_ITEM_TAG_LE = b"\xfe\xff\x00\xe0"


def _may_hold_element(raw: RawDataElement, target: TagPath) -> bool:
    """Whether ``raw`` may hold an element ``target`` matches: it may hold elements at all
    (:func:`may_nest`), and its bytes hold such a tag (:func:`_may_hold`)."""
    return may_nest(raw.tag, raw.VR, raw.length) and _may_hold(raw, target)


def _may_hold(raw: RawDataElement, target: TagPath) -> bool:
    """Whether ``raw``'s bytes may hold an element ``target`` matches: they hold the
    encoding of such a tag, in the file's byte order or (a UN value's) little endian."""
    value = raw.value
    if value is None:  # (pydicom reads an empty value so, in an implicit VR file always)
        return raw.length != 0
    if not isinstance(value, bytes):
        return True
    if _may_hold_bytes(value, target, little_endian=raw.is_little_endian):
        return True
    return not raw.is_little_endian and _may_hold_bytes(value, target, little_endian=True)


def _may_hold_bytes(value: bytes, target: TagPath, *, little_endian: bool) -> bool:
    """Whether ``value`` holds the encoding of a tag the last part of ``target`` matches."""
    if not target.has_wildcard:
        tag = target.last
        return struct.pack("<HH" if little_endian else ">HH", tag.group, tag.element) in value
    return tag_pattern(*target.masks[-1], little_endian).search(value) is not None


@functools.lru_cache(maxsize=256)
def tag_pattern(mask: int, value: int, little_endian: bool) -> re.Pattern[bytes]:
    """The encodings of the tags ``t`` with ``t & mask == value``, as a pattern of four
    bytes, each a class of the byte values the mask allows."""
    shifts = (16, 24, 0, 8) if little_endian else (24, 16, 8, 0)

    def byte_class(shift: int) -> str:
        m, v = mask >> shift & 0xFF, value >> shift & 0xFF
        return "[" + "".join(f"\\x{b:02x}" for b in range(256) if b & m == v) + "]"

    return re.compile("".join(byte_class(shift) for shift in shifts).encode("ascii"))


#: The VRs pydicom never reads elements from: all but SQ and UN.
_FLAT_VRS = frozenset(
    "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SS ST SV TM UC UI UL UR "
    "US UT UV".split()
)


def may_nest(tag: int, vr: str | None, length: int) -> bool:
    """Whether an element as read (``vr`` ``None`` in an implicit VR file) may hold
    elements once pydicom converts it: a sequence, a UN value, a value of undefined length
    or of a VR pydicom does not know; in an implicit VR file, any element but a private
    creator whose dictionary VR is not a flat one (private and unknown ones included)."""
    if length == 0xFFFFFFFF:
        return True
    if vr is not None:
        return vr not in _FLAT_VRS
    return not _flat_in_dictionary(tag)


@functools.lru_cache(maxsize=4096)
def _flat_in_dictionary(tag: int) -> bool:
    found = BaseTag(tag)
    if found.is_private:
        return found.is_private_creator  # (pydicom reads every creator as LO)
    try:  # ("US or SS" and the like: flat when each is)
        return all(vr in _FLAT_VRS for vr in dictionary_VR(found).split(" or "))
    except KeyError:
        return False


def _expand_un_sequences(ds: Dataset) -> None:
    """Parse private sequences an implicit-VR file left as UN bytes (pydicom cannot know an
    unknown creator's VR), so deletions and UID replacement reach inside them; also those
    stored as UN that pydicom gives a private dictionary's flat VR (OB, say).

    An element still raw whose bytes do not start with an item (an empty one included) holds
    no sequence: it is left unconverted, which spares a header-only rewrite the conversion of
    every value (and keeps an empty UN element's bytes, which the conversion would give the
    dictionary's VR)."""
    for tag, found in list(ds._dict.items()):
        value = getattr(found, "value", None)
        stored_as_un = False
        if isinstance(found, RawDataElement):
            if not isinstance(value, bytes) or value[:4] != _ITEM_TAG_LE:
                continue
            stored_as_un = found.VR == "UN" or (found.VR is None and may_nest(tag, None, 0))
        elem = ds[tag]
        un = elem.VR == "UN" or stored_as_un
        if un and isinstance(elem.value, bytes) and elem.value[:4] == _ITEM_TAG_LE:
            sequence = _un_as_sequence(elem.value)
            if sequence is None:
                continue  # not a sequence after all: the bytes stay as they are
            elem.VR = "SQ"
            elem.value = sequence
        if elem.VR == "SQ":
            for item in elem.value:
                _expand_un_sequences(item)


def _un_as_sequence(value: bytes) -> Sequence | None:
    """A UN element's bytes read as a sequence (implicit VR little endian, as the standard
    has UN values hold one), or ``None`` when they do not read as one."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return convert_SQ(value, True, True)
    except Exception:
        return None


def _replace_uids(ds: Dataset, mapping: Mapping[str, str]) -> None:
    for elem in ds:
        if elem.VR == "UN" and isinstance(elem.value, bytes):
            text = elem.value.rstrip(b"\x00 ").decode("ascii", "replace")
            if text in mapping:
                hashed = mapping[text].encode("ascii")
                elem.value = hashed + b"\x00" * (len(hashed) % 2)
            continue
        if elem.VR == "UI" and elem.value:
            values = elem.value if isinstance(elem.value, MultiValue | list) else [elem.value]
            new = [mapping.get(str(v), str(v)) for v in values]
            if new != [str(v) for v in values]:
                elem.value = new if len(new) > 1 else new[0]
        elif elem.VR == "SQ":
            for item in elem.value:
                _replace_uids(item, mapping)


def _label(tag: BaseTag) -> str:
    keyword = keyword_for_tag(tag) or ("private" if tag.is_private else "unknown")
    return f"({tag.group:04X},{tag.element:04X}) {keyword}"


DEIDENTIFICATION_MEANING = "XNAT DicomEdit 6 Script"


def deidentification_item(script_id: str) -> Dataset:
    """The (0012,0064) item XNAT writes for one script."""
    item = Dataset()
    item.CodeValue = script_id[:16]
    item.CodingSchemeDesignator = "XNAT"
    item.CodingSchemeVersion = "1.0"
    item.CodeMeaning = DEIDENTIFICATION_MEANING
    return item


def record_deidentification(ds: Dataset, script_id: str) -> None:
    """Append the script's item to DeidentificationMethodCodeSequence; mark the identity
    removed."""
    if "DeidentificationMethodCodeSequence" not in ds:
        ds.DeidentificationMethodCodeSequence = Sequence()
    ds.DeidentificationMethodCodeSequence.append(deidentification_item(script_id))
    ds.PatientIdentityRemoved = "YES"
