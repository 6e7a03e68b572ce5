"""Parse .ppc text into a ScheduleDef; lark errors become one-line ScheduleErrors.

The tree is turned into the AST without recursion, and every expression and block
records its nesting depth as it is built, so a file nested deeper than MAX_NESTING is
refused at the first node past the limit (expansion recurses over the AST).
"""

from __future__ import annotations

import functools
import importlib.resources

import lark
from lark import Lark, Token, v_args
from lark.visitors import Transformer_NonRecursive

from ppc.errors import PpcError, ScheduleError, SourcePos
from ppc.ir import ops
from ppc.ir.order import Kind
from ppc.lang import ast
from ppc.lang.limits import MAX_LITERAL_DIGITS, MAX_NESTING

RESERVED = ("R", "M", "V", "S")
"""Names the language binds itself (ranks, microbatches, stages per rank, stages)."""

_FRIENDLY = {
    "NAME": "a name",
    "SCHEDULE_NAME": "a schedule name",
    "INT": "a number",
    "STRING": 'a "message"',
    "DOC": "a doc string",
    "LIMIT": "inflight or retained",
    "COMP_OP": "a comparison",
    "ADD_OP": "+ or -",
    "MUL_OP": "*, // or %",
    "$END": "end of file",
}


def _kind_terminal() -> str:
    """The grammar's op token: every op-table kind that schedules may write."""
    names = sorted((k.name for k in ops.table() if k.statement), key=len, reverse=True)
    return "KIND: " + " | ".join(f'"{name}"' for name in names) + "\n"


@functools.cache
def _parser() -> Lark:
    text = importlib.resources.files("ppc.lang").joinpath("grammar.lark").read_text()
    return Lark(text + _kind_terminal(), parser="lalr", propagate_positions=True,
                maybe_placeholders=True)


ops.on_change(_parser.cache_clear)


def parse(text: str, path: str = "<string>") -> ast.ScheduleDef:
    """Parse schedule source; raises ScheduleError with file:line:col and a caret."""
    lines = [line.rstrip("\r") for line in text.split("\n")]  # lines as lark counts them
    try:
        tree = _parser().parse(text)
        return _ToAst(path, lines).transform(tree)
    except lark.exceptions.VisitError as error:
        if isinstance(error.orig_exc, PpcError):
            raise error.orig_exc from None
        meta = getattr(error.obj, "meta", None)
        pos = _pos(path, lines, getattr(meta, "line", 1), getattr(meta, "column", 1))
        raise ScheduleError(f"cannot read this {error.rule}: {error.orig_exc}", pos=pos) from None
    except lark.exceptions.UnexpectedInput as error:
        pos = _pos(path, lines, error.line, error.column)
        raise ScheduleError(_describe(error), pos=pos) from None


def _pos(path: str, lines: list[str], line: int, col: int) -> SourcePos:
    line = max(line, 1)
    source = lines[line - 1] if line <= len(lines) else ""
    return SourcePos(path=path, line=line, col=max(col, 1), source_line=source)


def _describe(error: lark.exceptions.UnexpectedInput) -> str:
    if isinstance(error, lark.exceptions.UnexpectedCharacters):
        return f"unexpected character {error.char!r}"
    if isinstance(error, lark.exceptions.UnexpectedEOF):
        return f"unexpected end of file, expected {_expected(error.expected)}"
    if isinstance(error, lark.exceptions.UnexpectedToken):
        token = error.token
        found = "end of file" if token.type == "$END" else repr(str(token))
        return f"unexpected {found}, expected {_expected(error.accepts or error.expected)}"
    return "syntax error"


def _expected(names) -> str:
    terminals = {t.name: t for t in _parser().terminals}
    shown = []
    for name in sorted(names):
        if name == "KIND":
            kinds = ", ".join(k.name for k in ops.table() if k.statement)
            shown.append(f"an op ({kinds})")
        elif name in _FRIENDLY:
            shown.append(_FRIENDLY[name])
        elif name in terminals and terminals[name].pattern.type == "str":
            shown.append(repr(terminals[name].pattern.value))
    shown = sorted(set(shown))
    if len(shown) == 1:
        return shown[0]
    return "one of " + ", ".join(shown)


@v_args(meta=True)
class _ToAst(Transformer_NonRecursive):
    """One method per grammar rule; every node gets the SourcePos of its first token."""

    def __init__(self, path: str, lines: list[str]):
        super().__init__()
        self._path = path
        self._lines = lines
        self._depths: dict[int, tuple[object, int]] = {}  # id(node) -> (node, its nesting depth)

    def _at(self, meta_or_token) -> SourcePos:
        return _pos(self._path, self._lines, meta_or_token.line, meta_or_token.column)

    def _nest(self, node, children, what: str, at: SourcePos | None = None):
        """Record `node`'s depth (one more than its deepest child); refuse past MAX_NESTING."""
        depth = 1 + max((self._depth(c) for c in children), default=0)
        if depth > MAX_NESTING:
            raise ScheduleError(
                f"{what} nested deeper than {MAX_NESTING} levels (the limit of the language)",
                pos=at or node.pos,
            )
        self._depths[id(node)] = (node, depth)
        return node

    def _depth(self, node) -> int:
        entry = self._depths.get(id(node))
        return entry[1] if entry is not None and entry[0] is node else 0

    def _name(self, token) -> str:
        """A name the schedule binds (param, let, loop or rank variable): not a reserved one."""
        name = str(token)
        if name in RESERVED:
            raise ScheduleError(
                f"{name} is reserved: the language binds {', '.join(RESERVED)} "
                "(ranks, microbatches, stages per rank, stages)",
                pos=self._at(token),
            )
        return name

    # ------------------------------------------------------------ file structure

    def start(self, meta, children):
        doc = ""
        if children and isinstance(children[0], Token) and children[0].type == "DOC":
            doc = " ".join(children[0][3:-3].split())
            children = children[1:]
        name_pos, *decls, body = children
        name, pos = name_pos
        params = tuple(d for d in decls if isinstance(d, ast.Param))
        requires = tuple(d for d in decls if isinstance(d, ast.Require))
        placements = [d for d in decls if isinstance(d, ast.Placement)]
        if len(placements) > 1:
            raise ScheduleError("a schedule has at most one placement", pos=placements[1].pos)
        placement = placements[0] if placements else ast.Placement(kind="loop", pos=pos)
        virtuals = [d for d in decls if isinstance(d, tuple)]  # (value, pos) from `virtual`
        if len(virtuals) > 1:
            raise ScheduleError("a schedule declares `virtual` at most once", pos=virtuals[1][1])
        _check_rank_variable(params, body)
        return ast.ScheduleDef(
            name=name, doc=doc, params=params, requires=requires,
            placement=placement, body=body, pos=pos,
            virtual=virtuals[0][0] if virtuals else None,
        )

    def header(self, meta, children):
        return str(children[0]), self._at(children[0])

    def param(self, meta, children):
        return ast.Param(name=self._name(children[0]), default=children[1], pos=self._at(meta))

    def require(self, meta, children):
        cond, message = children
        return ast.Require(cond=cond, message=str(message)[1:-1], pos=self._at(meta))

    def virtual(self, meta, children):
        value = int(children[0])
        if value < 1:
            raise ScheduleError(f"virtual must be at least 1, got {value}", pos=self._at(children[0]))
        return value, self._at(meta)

    def placement_named(self, meta, children):
        name = str(children[0])
        kinds = {"loop": "loop", "vshape": "vshape", "v": "vshape"}
        if name not in kinds:
            raise ScheduleError(
                f"unknown placement {name!r}: expected loop, vshape or [rank, ...]",
                pos=self._at(children[0]),
            )
        return ast.Placement(kind=kinds[name], pos=self._at(meta))

    def placement_map(self, meta, children):
        ranks = tuple(c for c in children if c is not None)
        return ast.Placement(kind="map", ranks=ranks, pos=self._at(meta))

    def per_rank(self, meta, children):
        var, block = children
        return ast.PerRank(var=self._name(var), body=block, pos=self._at(meta))

    def policy(self, meta, children):
        split, prefer, limits, when = False, (), {}, []
        for kind, value, pos in children:
            if kind == "split":
                split = True
            elif kind == "prefer":
                prefer = value
            elif kind == "when":
                if any(w.limit == value.limit for w in when):
                    raise ScheduleError(f"`when {value.limit} full` is given twice", pos=pos)
                when.append(value)
            else:
                if kind in limits:
                    raise ScheduleError(f"{kind} is limited twice", pos=pos)
                limits[kind] = value
        if not prefer:
            raise ScheduleError("a policy needs a `prefer` line, e.g. prefer B, F", pos=self._at(meta))
        return ast.Policy(
            split_backward=split, prefer=prefer, inflight=limits.get("inflight"),
            retained=limits.get("retained"), pos=self._at(meta), when_full=tuple(when),
        )

    def split_backward(self, meta, children):
        return "split", True, self._at(meta)

    def prefer(self, meta, children):
        kinds = tuple(Kind(str(k)) for k in children)
        if len(set(kinds)) != len(kinds):
            raise ScheduleError("prefer lists an op kind twice", pos=self._at(meta))
        return "prefer", kinds, self._at(meta)

    def prefer_when_full(self, meta, children):
        limit, *kinds = children
        kinds = tuple(Kind(str(k)) for k in kinds)
        if len(set(kinds)) != len(kinds):
            raise ScheduleError("when ... prefer lists an op kind twice", pos=self._at(meta))
        when = ast.WhenFull(limit=str(limit), prefer=kinds, pos=self._at(meta))
        return "when", when, self._at(meta)

    def limit(self, meta, children):
        return str(children[0]), children[1], self._at(meta)

    # ------------------------------------------------------------ statements

    def block(self, meta, children):
        block = tuple(children)
        self._depths[id(block)] = (block, max((self._depth(c) for c in block), default=0))
        return block

    def let(self, meta, children):
        return ast.Let(name=self._name(children[0]), value=children[1], pos=self._at(meta))

    def for_loop(self, meta, children):
        var, (start, stop, reverse), body = children
        loop = ast.For(
            var=self._name(var), start=start, stop=stop, reverse=reverse, body=body, pos=self._at(meta)
        )
        return self._nest(loop, [body], "blocks")

    def up_range(self, meta, children):
        return children[0], children[1], False

    def down_range(self, meta, children):
        return children[0], children[1], True

    def if_stmt(self, meta, children):
        orelse: tuple = ()
        if len(children) % 2 == 1:
            orelse = children[-1]
            children = children[:-1]
        pairs = list(zip(children[0::2], children[1::2]))
        for cond, then in reversed(pairs):  # elif nests: it counts as a level
            branch = ast.If(cond=cond, then=then, orelse=orelse, pos=cond.pos)
            orelse = (self._nest(branch, [then, *orelse], "blocks"),)
        first = orelse[0]
        node = ast.If(cond=first.cond, then=first.then, orelse=first.orelse, pos=self._at(meta))
        self._depths[id(node)] = (node, self._depth(first))
        return node

    def op(self, meta, children):
        kind, args = Kind(str(children[0])), children[1:]
        pos = self._at(meta)
        if not kind.parts:
            if len(args) > 2:
                raise ScheduleError(f"{kind.name} takes (stage) or (stage, microbatch), got "
                                    f"{len(args)} arguments", pos=pos)
            return ast.Op(kind=kind, stage=args[0], mb=args[1] if len(args) > 1 else None, pos=pos)
        n = len(kind.parts)
        if len(args) not in (n, 2 * n):
            raise ScheduleError(f"{kind.name} overlaps {n} ops: give their stages ({n} arguments) or "
                                f"stage and microbatch of each ({2 * n})", pos=pos)
        per = len(args) // n
        parts = tuple(ast.Op(kind=Kind(alts[0]), stage=args[i * per],
                             mb=args[i * per + 1] if per == 2 else None, pos=pos)
                      for i, alts in enumerate(kind.parts))
        return ast.Op(kind=kind, stage=parts[0].stage, mb=parts[0].mb, pos=pos, parts=parts)

    # ------------------------------------------------------------ expressions

    def or_chain(self, meta, children):
        return self._fold(meta, ["or" if i % 2 else c for i, c in enumerate(_interleave(children))])

    def and_chain(self, meta, children):
        return self._fold(meta, ["and" if i % 2 else c for i, c in enumerate(_interleave(children))])

    def compare(self, meta, children):
        return self._fold(meta, children)

    def arith(self, meta, children):
        return self._fold(meta, children)

    def _fold(self, meta, items):
        result = items[0]
        for op, right in zip(items[1::2], items[2::2]):
            node = ast.BinOp(op=str(op), left=result, right=right, pos=result.pos)
            result = self._nest(node, [result, right], "expressions", at=right.pos)
        return result

    def not_(self, meta, children):
        node = ast.Unary(op="not", operand=children[0], pos=self._at(meta))
        return self._nest(node, children, "expressions")

    def neg(self, meta, children):
        node = ast.Unary(op="-", operand=children[0], pos=self._at(meta))
        return self._nest(node, children, "expressions")

    def number(self, meta, children):
        digits = str(children[0])
        if len(digits) > MAX_LITERAL_DIGITS:
            raise ScheduleError(
                f"number with {len(digits)} digits: at most {MAX_LITERAL_DIGITS}", pos=self._at(meta)
            )
        return ast.Num(value=int(digits), pos=self._at(meta))

    def true(self, meta, children):
        return ast.Num(value=1, pos=self._at(meta))

    def false(self, meta, children):
        return ast.Num(value=0, pos=self._at(meta))

    def name(self, meta, children):
        return ast.Name(id=str(children[0]), pos=self._at(meta))

    def call(self, meta, children):
        func, *args = children
        args = tuple(a for a in args if a is not None)
        node = ast.Call(func=str(func), args=args, pos=self._at(meta))
        return self._nest(node, args, "expressions")


def _check_rank_variable(params: tuple[ast.Param, ...], body) -> None:
    """The rank variable (`per rank r`, and `r` in policy limits) is bound by the
    language: a param, let or loop of that name would be silently shadowed or shadow it."""
    per_rank = isinstance(body, ast.PerRank)
    var = body.var if per_rank else "r"
    where = "the rank variable of `per rank`" if per_rank else "the rank in policy limits"
    for param in params:
        if param.name == var:
            raise ScheduleError(f"{var} is reserved: it is {where}", pos=param.pos)
    stack = list(reversed(body.body)) if per_rank else []  # file order
    while stack:
        stmt = stack.pop()
        bound = stmt.name if isinstance(stmt, ast.Let) else getattr(stmt, "var", None)
        if bound == var:
            raise ScheduleError(f"{var} is reserved: it is {where}", pos=stmt.pos)
        if isinstance(stmt, ast.For):
            stack.extend(reversed(stmt.body))
        elif isinstance(stmt, ast.If):
            stack.extend(reversed(stmt.then + stmt.orelse))


def _interleave(children):
    """[a, b, c] -> [a, None, b, None, c] so that _fold sees operand/operator pairs."""
    out = []
    for i, child in enumerate(children):
        if i:
            out.append(None)
        out.append(child)
    return out
