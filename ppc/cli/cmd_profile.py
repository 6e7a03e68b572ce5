"""`ppc profile`: measure per-stage F/B/I/W times and activation bytes on a device."""

from __future__ import annotations

import argparse

from ppc.cli.options import add_out, add_ranks


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "profile",
        help="measure a model's per-stage costs on the real device",
        description="Measure per-stage F, B, I, W times (warm-up, then the median of repeats; CUDA "
        "events on a GPU), activation bytes per microbatch and bytes sent per stage, and write "
        "the costs JSON that `ppc simulate --costs` and `ppc plan --costs` read.",
    )
    p.add_argument("--model", required=True, help="model preset (e.g. tiny-llama) or HF directory")
    p.add_argument("--stages", type=int, required=True, help="stages to split the model into")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    p.add_argument("--microbatch-size", type=int, default=1, help="sequences per microbatch")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default=None,
                   help="bf16 autocast as `ppc run` uses on GPU (default: bf16 on cuda, fp32 on cpu)")
    p.add_argument("--warmup-repeats", "--warmup", dest="warmup", type=int, default=2,
                   help="untimed runs of each op before timing (not `ppc run`'s LR warm-up)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each op (the median is kept)")
    p.add_argument("--split", "--by", dest="by", default="cost", choices=("cost", "layers", "params"),
                   help="how to cut the model into stages: balance estimated FLOPs, blocks or parameters")
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer measurement")
    p.add_argument("--p2p", action="store_true",
                   help="also measure point-to-point latency and bandwidth between two processes "
                   "(gloo on cpu, NCCL on two GPUs) into the costs' \"comm\"")
    add_ranks(p, default=None,
              help="CPU only: take the op costs from a short calibration `ppc run` on R ranks of this "
              "host (CPU time per op, per posted transfer group and per optimizer step), and record "
              "the host's cores, which the simulator shares between computing ranks")
    p.add_argument("--p2p-mib", type=float, default=16.0, help="size of the bandwidth message in MiB")
    add_out(p, required=True, help="costs JSON to write")
    return p


def run(args) -> int:
    from rich.table import Table

    from ppc.cli.console import make_console
    from ppc.measure.profile import ProfileRequest, profile_model

    console = make_console()
    request = ProfileRequest(
        model=args.model, stages=args.stages, seq_len=args.seq_len, microbatch_size=args.microbatch_size,
        device=args.device, warmup=args.warmup, repeats=args.repeats, by=args.by, layers=not args.no_layers,
        dtype=args.dtype, ranks=args.ranks, p2p_bytes=int(args.p2p_mib * 2**20) if args.p2p else None,
    )
    with console.status(f"profiling {args.model} on {args.device}") as status:
        profile = profile_model(request, progress=status.update)
    profile.save(args.out)
    c = profile.stage_costs
    table = Table(title=f"{args.model}: {args.stages} stages, microbatch {args.microbatch_size} x {args.seq_len} "
                  f"on {profile.meta.get('device', args.device)}")
    for column in ("stage", "F (ms)", "B (ms)", "I (ms)", "W (ms)", "activations (MiB)", "sent (KiB)", "params"):
        table.add_column(column, justify="right")
    for s in range(c.stages):
        table.add_row(str(s), f"{c.forward[s] * 1e3:.3f}", f"{c.backward(s) * 1e3:.3f}",
                      f"{c.backward_input[s] * 1e3:.3f}", f"{c.backward_weight[s] * 1e3:.3f}",
                      f"{c.activation_bytes[s] / 2**20:.2f}", f"{profile.stage_output_bytes[s] / 2**10:.1f}",
                      f"{profile.stage_params[s]:,}")
    console.print(table)
    if profile.layers:
        console.print(f"{len(profile.layers)} per-layer costs recorded for `ppc plan`")
    if "p2p" in profile.meta:
        console.print(f"point-to-point {profile.meta['p2p']}", highlight=False)
    calibration = profile.meta.get("calibration")
    if calibration:
        console.print(
            f"calibration run: {calibration['schedule']} (V={calibration['virtual']}) on {args.ranks} ranks, "
            f"{calibration['measured_step_s'] * 1e3:.1f} ms per step; host: {calibration['physical_cores']:g} "
            f"cores, effective {c.cores:.2f} for the simulator, {c.threads} thread(s) per rank",
            highlight=False,
        )
    console.print(f"wrote {args.out}")
    return 0
