"""The interactive HTML timeline: self-contained, every rank and op encoded, and it runs."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from ppc.sim.html import page, write_html
from ppc.sim.timeline import simulate

from ppc.compiler.lower import lower
from ppc.costs import CostModel
from ppc.ir import ops
from ppc.ir.program import TensorSpec
from ppc.ir.stage_graph import StageGraph, StageValue
from ppc.lang import load_schedule

HARNESS = Path(__file__).parent / "data" / "timeline_harness.js"
DTYPE = {"Float32Array": "<f4", "Uint8Array": "u1", "Uint16Array": "<u2", "Uint32Array": "<u4",
         "Int16Array": "<i2", "Int32Array": "<i4"}


def timeline(name="1f1b", ranks=2, microbatches=4, virtual=1, graph=None, costs=None):
    order = load_schedule(name).expand(ranks=ranks, microbatches=microbatches, virtual=virtual)
    costs = costs or CostModel.uniform(order.stages)
    return simulate(lower(order, graph, costs=costs), costs, graph=graph)


def chain_with_bytes(stages: int, nbytes: int) -> StageGraph:
    spec = TensorSpec(name="h", shape=(nbytes // 4,), dtype="float32", bytes=nbytes)
    values = tuple(StageValue(name=f"h{s}", producer=s, consumers=(s + 1,), spec=spec) for s in range(stages - 1))
    return StageGraph(num_stages=stages, values=values)


class _Scripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: dict[str, str] = {}
        self.tags: list[tuple[str, dict]] = []
        self._id: str | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._id = dict(attrs).get("id", "renderer")
            self.scripts[self._id] = ""

    def handle_endtag(self, tag):
        if tag == "script":
            self._id = None

    def handle_data(self, data):
        if self._id:
            self.scripts[self._id] += data


def decode(text: str):
    parser = _Scripts()
    parser.feed(text)
    meta = json.loads(parser.scripts["ppc-meta"])
    data = base64.b64decode(parser.scripts["ppc-data"])

    def array(entry):
        return np.frombuffer(data, dtype=DTYPE[entry["type"]], count=entry["length"], offset=entry["offset"])

    return parser, meta, data, array


def test_page_is_self_contained_and_holds_every_rank_and_op():
    t = timeline("interleaved_1f1b", ranks=4, microbatches=8, virtual=2)
    parser, meta, _, array = decode(page([t]))
    assert not [attrs for tag, attrs in parser.tags if "src" in attrs or "href" in attrs]  # nothing fetched
    assert "<canvas" in page([t]) and "addEventListener(\"wheel\"" in parser.scripts["renderer"]
    (group,) = meta["groups"]
    assert group["ranks"] == 4 and "R=4 M=8 S=8" in group["caption"]
    compute = group["compute"]
    assert compute["offsets"] == [0, 32, 64, 96, 128]  # 8 mbs x 2 stages x (F, B) per rank
    start, end, code = array(compute["start"]), array(compute["end"]), array(compute["code"])
    stage, mb = array(compute["stage"]), array(compute["mb"])
    for rank in range(4):
        spans = list(t.spans(rank, compute_only=True))
        lo = compute["offsets"][rank]
        assert [f"{stage[lo + i]}{meta['kinds'][code[lo + i]]}{mb[lo + i]}" for i in range(len(spans))] == [
            str(s.instruction) for s in spans]
        np.testing.assert_allclose(start[lo:lo + len(spans)], [s.start for s in spans], rtol=1e-6)
        np.testing.assert_allclose(end[lo:lo + len(spans)], [s.end for s in spans], rtol=1e-6)
    assert group["chunks"] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_transfers_carry_peer_and_bytes():
    graph = chain_with_bytes(2, 1 << 20)
    costs = CostModel.from_dict({"comm": {"latency": 0.1, "bandwidth": 1e7}}, 2)
    t = timeline(graph=graph, costs=costs)
    _, meta, _, array = decode(page([t]))
    comm = meta["groups"][0]["comm"]
    code, peer = array(comm["code"]), array(comm["peer"])
    sizes = np.array(comm["bytes"])[array(comm["bytesIndex"])]
    sends = code == ops.get("SEND_F").code
    assert sends.sum() == 4 and (peer[sends] == 1).all() and (sizes[sends] == 1 << 20).all()
    recv_b = code == ops.get("RECV_B").code
    assert recv_b.sum() == 4 and (peer[recv_b] == 1).all()


def test_large_page_stays_compact():
    t = timeline("interleaved_1f1b", ranks=16, microbatches=64, virtual=2)  # 4,096 compute ops
    text = page([t])
    _, meta, data, _ = decode(text)
    ops = meta["groups"][0]["compute"]["offsets"][-1]
    comm = meta["groups"][0]["comm"]["offsets"][-1]
    assert ops == 16 * 64 * 2 * 2
    assert len(data) <= 14 * (ops + comm) + 64 * 8  # float32 x 2, uint8, uint16 x 2 (+ alignment)
    assert len(text) < 1.4 * len(data) + 40_000


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_renderer_runs_draws_every_rank_and_describes_the_op_under_the_pointer(tmp_path):
    t = timeline("1f1b", ranks=4, microbatches=8)
    path = tmp_path / "t.html"
    write_html([t], path)
    # the harness's window: 1600 x 900 px, header 60 px; rows of 28 px start at 26 + 22 = 48;
    # time 0.5 of 33 units lies at x = 76 + 0.5 / 33 * 1514
    x = 76 + 0.5 / 33 * 1514
    result = subprocess.run(["node", str(HARNESS), str(path), f"{x},{48 + 10}", f"{x},{48 + 28 + 10}"],
                            capture_output=True, text=True, timeout=60, check=True)
    stats = json.loads(result.stdout)
    assert [s for s in stats["texts"] if s.startswith("rank ")][:4] == [f"rank {r}" for r in range(4)]
    first, second = stats["hovers"]
    assert first.splitlines()[1:4] == ["0F0  forward", "rank 0  stage 0  microbatch 0",
                                       "start 0  end 1  (1 units)"]
    assert second is None  # rank 1 idles until time 1
    assert stats["fillRect"] >= 64 and stats["zoomRects"] > 0
    assert [s.split()[0] for s in stats["legend"]][:2] == ["F", "B"]


def test_no_script_end_tag_inside_the_data():
    t = timeline()
    text = page([t], title="</script><b>x")
    assert text.count("</script>") == 3
    assert re.search(r"<h1>&lt;/script&gt;&lt;b&gt;x</h1>", text)
