"""Fuzz ppc's inputs: seeded mutants of the built-in schedules, torch CSVs and costs
(JSON files and inline `--costs`), each run through the CLI entry point.

Every mutant must end in exit 0, or exit 2 with a one-line message (plus, for an error
in a file, the source line and a caret under it); never a traceback, never a hang.

    .venv/bin/python scripts/fuzz.py [--count 2400] [--seed 0] [--timeout 30]

Each mutant runs in a forked child (so a hang is cut at --timeout by SIGALRM and the
peak memory of each is known from wait4's rusage). tests/test_fuzz.py loads this file
for its generator and in-process runner and runs a few hundred mutants in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import re
import resource
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# ----------------------------------------------------------------------------- mutants


@dataclass(frozen=True, kw_only=True)
class Mutant:
    """One fuzz case: the files it writes and the CLI arguments ({dir} is their folder)."""

    family: str
    """"ppc", "csv", "costs-json" or "costs-inline"."""
    name: str
    """What was mutated and how, for the report."""
    files: dict[str, bytes] = field(default_factory=dict)
    argv: tuple[str, ...]

    def args(self, folder: str) -> list[str]:
        return [a.replace("{dir}", folder) for a in self.argv]


# sizes each built-in schedule is compiled at: (R, M, V)
SIZES = {
    "1f1b": (4, 8, 1), "gpipe": (4, 8, 1), "zb_h1": (4, 8, 1),
    "interleaved_1f1b": (2, 4, 2), "looped_bfs": (2, 4, 2), "zbv": (2, 4, 2),
}
BIG_NUMBERS = ("0", "-1", "9999999999", "9" * 18, "9" * 19, "9" * 5000, "2147483648", "10000000")
GARBAGE = ([], {}, "x", None, True, -1, 1e308, [[[1]]], {"F": {"F": []}}, [1, "2"], "NaN")
INLINE_KEYS = ("F", "B", "I", "W", "latency", "bandwidth", "weight_share", "step", "post",
               "cores", "threads")
INLINE_NOISE = ("Forward", "f", "lat", "bandwith", "", "F F", "é", "F\x00")
INLINE_VALUES = ("1", "0", "0.5", "-1", "nan", "inf", "-inf", "1e308", "1e-300", "x", "", "1e999",
                 "2", "1_0", "0x10")


def _ppc_sources() -> dict[str, bytes]:
    from ppc.lang import builtin_schedules

    return {name: Path(path).read_bytes() for name, path in builtin_schedules().items()}


def _csv_sources() -> dict[str, bytes]:
    from ppc.lang import load_schedule
    from ppc.lang.csv_format import write_csv

    out = {}
    for name, (r, m, v) in (("1f1b", (4, 8, 1)), ("interleaved_1f1b", (2, 4, 2)), ("zb_h1", (4, 4, 1))):
        out[name] = write_csv(load_schedule(name).expand(ranks=r, microbatches=m, virtual=v)).encode()
    return out


def _program_sources() -> dict[str, dict]:
    """Compiled programs as `ppc compile --format json` writes them (program and stage graph)."""
    from ppc.compiler import compile_program
    from ppc.ir.stage_graph import synthetic_chain
    from ppc.lang import load_schedule

    out = {}
    for name, (r, m, v) in (("1f1b", (2, 2, 1)), ("zb_h1", (3, 3, 1)), ("dualpipev", (2, 4, 2))):
        program = compile_program(load_schedule(name).expand(ranks=r, microbatches=m, virtual=v))
        out[name] = {"program": program.to_json(), "graph": synthetic_chain(program.stages).to_json()}
    return out


def _costs_sources() -> dict[str, dict]:
    return {
        "uniform": {"unit": "s", "F": 1.0, "I": 1.0, "W": 1.0},
        "lists": {"unit": "s", "F": [1, 2, 1, 1], "B": [2, 4, 2, 2], "step": [0.1] * 4,
                  "comm": {"latency": 0.1, "bandwidth": 1e9, "post": 0.01},
                  "activation_bytes": [1000] * 4, "weight_share": 0.5},
        "host": {"F": [1, 1, 1, 1], "I": 1, "W": 1, "host": {"cores": 2, "threads": 1},
                 "layers": [{"name": "l0", "F": 1, "B": 2, "params": 10}], "meta": {"x": 1}},
    }


def _byte_mutation(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    kind = rng.choice(("flip", "insert", "delete", "duplicate", "truncate-utf8"))
    if not data:
        return "empty", data
    i = rng.randrange(len(data))
    if kind == "flip":
        return f"flip@{i}", data[:i] + bytes([rng.randrange(256)]) + data[i + 1:]
    if kind == "insert":
        junk = rng.choice((b"\xff", b"\x00", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"{", b"(", b"\n",
                           b'"', b",", "é".encode(), bytes(rng.randrange(256) for _ in range(8))))
        return f"insert@{i}", data[:i] + junk + data[i:]
    j = min(len(data), i + rng.randrange(1, 64))
    if kind == "delete":
        return f"delete@{i}:{j}", data[:i] + data[j:]
    if kind == "duplicate":
        k = rng.randrange(len(data) + 1)
        return f"duplicate@{i}:{j}->{k}", data[:k] + data[i:j] * rng.choice((1, 2, 50)) + data[k:]
    return f"truncate-utf8@{i}", data[:i] + "é".encode()[:1]


_NUMBER = re.compile(rb"(?<![A-Za-z_0-9])\d+(?![A-Za-z_0-9])")


def _structural_ppc(rng: random.Random, data: bytes, repeats: tuple[int, ...]) -> tuple[str, bytes]:
    numbers = list(_NUMBER.finditer(data))
    kind = rng.choice(("parens", "unary", "not", "calls", "long-sum", "long-product", "big-number",
                       "nest-if", "nest-for", "elif-chain", "reserved", "loop-bomb"))
    if not numbers and kind not in ("nest-if", "nest-for", "elif-chain", "reserved", "loop-bomb"):
        kind = "nest-if"  # nothing to rewrite: insert a structure instead
    if kind in ("nest-if", "nest-for", "elif-chain", "reserved", "loop-bomb"):
        brace = data.find(b"{")
        k = rng.choice(repeats)
        if brace < 0 or data.find(b"per rank") < 0:
            return "append-garbage", data + b"\n" + b"(" * 5000
        at = brace + 1
        insert = {
            "nest-if": b" if 1 { " * k + b"}" * k,
            "nest-for": b" for q in 0 .. 1 { " * k + b"}" * k,
            "elif-chain": b" if 0 { }" + b" elif 0 { }" * k,
            "reserved": rng.choice((b" let R = 1 ", b" let r = 2 ", b" for M in 0 .. 2 { } ",
                                    b" let S = 1 ")),
            "loop-bomb": rng.choice((b" for q in 0 .. 999999999999 { } ",
                                     b" for q in 0 .. 100000 { for p in 0 .. 100000 { let z = 1 } } ",
                                     b" let z = 999999999 * 999999999 * 999999999 ")),
        }[kind]
        return f"{kind}x{k}", data[:at] + insert + data[at:]
    match = rng.choice(numbers)
    n = match.group()
    k = rng.choice(repeats)
    new = {
        "parens": b"(" * k + n + b")" * k,
        "unary": b"-" * k + n,
        "not": b"not " * k + n,
        "calls": b"min(" * k + n + b")" * k,
        "long-sum": b"1+" * k + n,
        "long-product": b"2*" * k + n,
        "big-number": rng.choice(BIG_NUMBERS).encode(),
    }[kind]
    return f"{kind}x{k}@{match.start()}", data[:match.start()] + new + data[match.end():]


def ppc_mutants(rng: random.Random, count: int, repeats: tuple[int, ...]) -> Iterator[Mutant]:
    sources = _ppc_sources()
    names = sorted(sources)
    for i in range(count):
        name = names[i % len(names)]
        data = sources[name]
        steps = []
        for _ in range(rng.choice((1, 1, 2, 3))):
            if rng.random() < 0.4:
                how, data = _structural_ppc(rng, data, repeats)
            else:
                how, data = _byte_mutation(rng, data)
            steps.append(how)
        r, m, v = SIZES.get(name, (4, 8, 1))
        if rng.random() < 0.05:
            r, m = rng.choice(((100000, 8), (4, 10000000), (1, 1), (3, 7)))
        command = "simulate" if rng.random() < 0.3 else "compile"
        argv = (command, "{dir}/s.ppc", f"--ranks={r}", f"--microbatches={m}", f"--virtual={v}")
        if command == "compile" and rng.random() < 0.3:
            argv += ("--format", rng.choice(("json", "csv")))
        yield Mutant(family="ppc", name=f"{name}:{'+'.join(steps)}", files={"s.ppc": data}, argv=argv)


def _structural_csv(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    kind = rng.choice(("big-index", "blank-lines", "empty-row", "quote", "long-cell", "nul",
                       "many-rows", "crlf"))
    if kind == "big-index":
        cells = list(re.finditer(rb"\d+[FBIW]\d+", data))
        cell = rng.choice(cells)
        big = rng.choice((b"9999999999F0", b"0F9999999999", b"99999999999999999999999B1", b"5F" + b"9" * 5000))
        return kind, data[:cell.start()] + big + data[cell.end():]
    if kind == "blank-lines":
        return kind, data + b"\n" * rng.choice((1, 3, 1000))
    if kind == "empty-row":
        i = data.find(b"\n") + 1
        return kind, data[:i] + rng.choice((b"\n", b",,,\n", b" \n")) + data[i:]
    if kind == "quote":
        i = rng.randrange(len(data))
        return kind, data[:i] + b'"' + data[i:]
    if kind == "long-cell":
        return kind, data.replace(b",", b"," + b" " * 200000 + b"0F0,", 1)
    if kind == "nul":
        i = rng.randrange(len(data))
        return kind, data[:i] + b"\x00" + data[i:]
    if kind == "many-rows":
        return kind, data + b"0F0\n" * 5000
    return kind, data.replace(b"\n", b"\r\n")


def csv_mutants(rng: random.Random, count: int) -> Iterator[Mutant]:
    sources = _csv_sources()
    names = sorted(sources)
    for i in range(count):
        name = names[i % len(names)]
        data = sources[name]
        how, data = (_structural_csv if rng.random() < 0.4 else _byte_mutation)(rng, data)
        command = rng.choice(("compile", "simulate"))
        yield Mutant(family="csv", name=f"{name}:{how}", files={"s.csv": data},
                     argv=(command, "{dir}/s.csv"))


def _replace_somewhere(rng: random.Random, doc, value):
    """`doc` with one randomly chosen value (at any depth) replaced by `value`."""
    if isinstance(doc, dict) and doc and rng.random() < 0.7:
        key = rng.choice(sorted(doc))
        return {**doc, key: _replace_somewhere(rng, doc[key], value)}
    if isinstance(doc, list) and doc and rng.random() < 0.7:
        i = rng.randrange(len(doc))
        return doc[:i] + [_replace_somewhere(rng, doc[i], value)] + doc[i + 1:]
    return value


def _structural_costs(rng: random.Random, doc: dict) -> tuple[str, bytes]:
    kind = rng.choice(("garbage", "unknown-key", "length", "deep", "top-level", "nonfinite"))
    if kind == "garbage":
        value = rng.choice(GARBAGE)
        return f"garbage={value!r:.20}", json.dumps(_replace_somewhere(rng, doc, value)).encode()
    if kind == "unknown-key":
        key = rng.choice(("Forward", "f", "latncy", "comm.latency", "", "weightshare", "hosts"))
        return f"unknown-key={key}", json.dumps({**doc, key: 1}).encode()
    if kind == "length":
        return "length", json.dumps({**doc, rng.choice(("F", "I", "W", "step", "activation_bytes")):
                                     [1] * rng.choice((0, 1, 3, 5, 100))}).encode()
    if kind == "deep":
        k = rng.choice((100, 1000, 100000))
        return f"deep{k}", b'{"F": ' + b"[" * k + b"1" + b"]" * k + b"}"
    if kind == "top-level":
        return "top-level", rng.choice((b"[1]", b"1", b'"x"', b"null", b"", b"[]", b"{}"))
    key = rng.choice(("F", "I", "W", "step", "latency", "post", "weight_share", "cores"))
    value = rng.choice((b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-0.0", b"1e308"))
    return f"{key}={value.decode()}", b'{"' + key.encode() + b'": ' + value + b"}"


def costs_json_mutants(rng: random.Random, count: int) -> Iterator[Mutant]:
    sources = _costs_sources()
    names = sorted(sources)
    for i in range(count):
        name = names[i % len(names)]
        if rng.random() < 0.5:
            how, data = _structural_costs(rng, sources[name])
        else:
            how, data = _byte_mutation(rng, json.dumps(sources[name], indent=1).encode())
        path = "{dir}/costs.json" if rng.random() < 0.9 else "{dir}"  # sometimes a directory
        argv = ("simulate", "1f1b", "--ranks=4", "--microbatches=8", "--costs", path)
        if rng.random() < 0.3:
            argv += ("--json",)
        yield Mutant(family="costs-json", name=f"{name}:{how}", files={"costs.json": data}, argv=argv)


def program_mutants(rng: random.Random, count: int) -> Iterator[Mutant]:
    """Compiled programs with one value anywhere replaced, or a few bytes changed, through
    `ppc simulate FILE.json` (what `ppc run --schedule FILE.json` reads too)."""
    sources = _program_sources()
    names = sorted(sources)
    for i in range(count):
        name = names[i % len(names)]
        if rng.random() < 0.7:
            value = rng.choice((*GARBAGE, 0, 1, 2, 99, -2, "SEND_F", "RECV_B", "FB", "STEP"))
            how, data = f"value={value!r:.20}", json.dumps(_replace_somewhere(rng, sources[name], value)).encode()
        else:
            how, data = _byte_mutation(rng, json.dumps(sources[name]).encode())
        yield Mutant(family="program", name=f"{name}:{how}", files={"p.json": data},
                     argv=("simulate", "{dir}/p.json"))


def costs_inline_mutants(rng: random.Random, count: int) -> Iterator[Mutant]:
    for _ in range(count):
        parts = []
        for _ in range(rng.randrange(1, 5)):
            key = rng.choice(INLINE_KEYS) if rng.random() < 0.85 else rng.choice(INLINE_NOISE)
            value = rng.choice(INLINE_VALUES)
            parts.append(f"{key}={value}" if rng.random() < 0.95 else key)
        spec = ",".join(parts)
        schedule, v = rng.choice((("1f1b", 1), ("zb_h1", 1), ("interleaved_1f1b", 2)))
        argv = ("simulate", schedule, "--ranks=4", "--microbatches=8", f"--virtual={v}", "--costs", spec)
        yield Mutant(family="costs-inline", name=spec, argv=argv)


def mutants(seed: int, count: int, *, largest: int = 20000) -> list[Mutant]:
    """`count` mutants: half .ppc, an eighth CSV, an eighth compiled programs, a quarter
    costs (JSON and inline); nesting and repetition up to `largest` levels."""
    rng = random.Random(seed)
    repeats = tuple(k for k in (10, 63, 64, 65, 300, 1000, 3000, 20000) if k <= largest)
    n_ppc, n_csv, n_program = count // 2, count // 8, count // 8
    n_json = (count - n_ppc - n_csv - n_program) // 2
    n_inline = count - n_ppc - n_csv - n_program - n_json
    return [*ppc_mutants(rng, n_ppc, repeats), *csv_mutants(rng, n_csv), *program_mutants(rng, n_program),
            *costs_json_mutants(rng, n_json), *costs_inline_mutants(rng, n_inline)]


# ----------------------------------------------------------------------------- running


@dataclass(frozen=True, kw_only=True)
class Outcome:
    code: int | None
    """Exit code; None when the mutant raised (a traceback) or hung."""
    stderr: str
    traceback: str = ""
    hung: bool = False
    seconds: float = 0.0
    peak_rss_kib: int = 0


_MESSAGE = re.compile(r"^(ppc: .+|.+:\d+:\d+: .+)$")


def well_formed(outcome: Outcome) -> bool:
    """Exit 0, or exit 2 with one message line (plus a source line and a caret)."""
    if outcome.code == 0:
        return True
    if outcome.code != 2:
        return False
    lines = outcome.stderr.rstrip("\n").split("\n")
    if "Traceback" in outcome.stderr or not _MESSAGE.match(lines[0]):
        return False
    return len(lines) == 1 or (len(lines) == 3 and all(line.startswith("    ") for line in lines[1:]))


def run_in_process(argv: list[str]) -> Outcome:
    """ppc.cli.main(argv) with stdout and stderr captured; exceptions become a traceback."""
    from ppc.cli import main

    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    code, trace = None, ""
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        except Exception:  # noqa: BLE001  (a traceback is what the fuzz exists to find)
            trace = traceback.format_exc()
    return Outcome(code=code, stderr=err.getvalue(), traceback=trace,
                   seconds=time.perf_counter() - start)


def run_mutant_in_process(mutant: Mutant, folder: Path) -> Outcome:
    for name, data in mutant.files.items():
        (folder / name).write_bytes(data)
    return run_in_process(mutant.args(str(folder)))


def warm_up() -> None:
    """Import what the commands import lazily, once, so that forked children share it."""
    for argv in (["simulate", "zb_h1", "-r", "2", "-m", "2"], ["compile", "1f1b", "-r", "2", "-m", "2",
                                                              "--format", "json"]):
        assert run_in_process(argv).code == 0


def run_forked(mutant: Mutant, folder: Path, timeout: int) -> Outcome:
    """Run the mutant in a forked child, cut by SIGALRM after `timeout` seconds."""
    result = folder / "result.json"
    result.unlink(missing_ok=True)
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child
        code = 3
        try:
            signal.alarm(timeout)  # default action: the child dies, the parent sees SIGALRM
            outcome = run_mutant_in_process(mutant, folder)
            result.write_text(json.dumps({"code": outcome.code, "stderr": outcome.stderr[:4000],
                                          "traceback": outcome.traceback[-4000:]}))
            code = 0
        finally:
            os._exit(code)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    if os.WIFSIGNALED(status):
        hung = os.WTERMSIG(status) == signal.SIGALRM
        return Outcome(code=None, stderr="", traceback=f"killed by signal {os.WTERMSIG(status)}",
                       hung=hung, seconds=seconds, peak_rss_kib=usage.ru_maxrss)
    data = json.loads(result.read_text()) if result.exists() else {"code": None, "stderr": "",
                                                                   "traceback": "no result"}
    return Outcome(code=data["code"], stderr=data["stderr"], traceback=data["traceback"],
                   seconds=seconds, peak_rss_kib=usage.ru_maxrss)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=30)
    parser.add_argument("--show", type=int, default=5, help="failures to print in full")
    args = parser.parse_args()
    cases = mutants(args.seed, args.count)
    warm_up()
    counts: dict[str, dict[str, int]] = {}
    failures: list[tuple[Mutant, Outcome]] = []
    peak, slowest, start = 0, (0.0, ""), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ppc-fuzz-") as tmp:
        folder = Path(tmp)
        for n, mutant in enumerate(cases, start=1):
            outcome = run_forked(mutant, folder, args.timeout)
            row = counts.setdefault(mutant.family, {"mutants": 0, "exit 0": 0, "exit 2": 0,
                                                    "tracebacks": 0, "hangs": 0, "malformed": 0})
            row["mutants"] += 1
            if outcome.hung:
                row["hangs"] += 1
            elif outcome.traceback:
                row["tracebacks"] += 1
            elif not well_formed(outcome):
                row["malformed"] += 1
            else:
                row[f"exit {outcome.code}"] += 1
            if outcome.hung or outcome.traceback or not well_formed(outcome):
                failures.append((mutant, outcome))
            peak = max(peak, outcome.peak_rss_kib)
            slowest = max(slowest, (outcome.seconds, f"{mutant.family} {mutant.name[:60]}"))
            if n % 200 == 0:
                print(f"{n}/{len(cases)} done, {len(failures)} failures", file=sys.stderr, flush=True)
    total = {k: sum(row[k] for row in counts.values()) for k in next(iter(counts.values()))}
    print(f"fuzz: seed {args.seed}, {len(cases)} mutants, {time.perf_counter() - start:.0f} s wall")
    print(f"{'family':14} " + " ".join(f"{k:>10}" for k in total))
    for family, row in [*counts.items(), ("total", total)]:
        print(f"{family:14} " + " ".join(f"{v:>10}" for v in row.values()))
    print(f"peak RSS of one mutant: {peak / 1024:.0f} MiB; slowest: {slowest[0]:.1f} s ({slowest[1]})")
    print(f"this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    for mutant, outcome in failures[:args.show]:
        print(f"\nFAIL {mutant.family} {mutant.name[:100]} argv={list(mutant.argv)}")
        print(outcome.traceback or outcome.stderr[:2000] or f"exit {outcome.code}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
