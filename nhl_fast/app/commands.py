"""The bodies of the `nhl-fast` subcommands (the parser is in nhl_fast.app.cli)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from nhl_fast.app.progress import Reporter

INTERRUPTED = 130
# bench/ of the source tree this package runs from: a git clone (editable install, or on sys.path)
# has it next to nhl_fast/; an installed wheel has nhl_fast/ alone.
SOURCE_BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench")


class CommandError(Exception):
    """A command that cannot run as asked: `nhl-fast CMD: error: <message>`, exit status 2."""


def _fresh_dir(base: str) -> str:
    """base, or base-2, base-3, ... : a default run never overwrites an earlier one."""
    if not os.path.exists(base):
        return base
    i = 2
    while os.path.exists(f"{base}-{i}"):
        i += 1
    return f"{base}-{i}"


def cmd_train(args) -> int:
    from nhl_fast.app import ddp as data_parallel

    ddp = data_parallel.setup(args.device)  # under torchrun: this rank's context, else None
    try:
        return _train(args, ddp)
    finally:
        if ddp is not None:
            ddp.close()


def _train(args, ddp) -> int:
    from nhl_fast.app.train import Interrupted, TrainConfig, fit, load_training_data, summary

    lead = ddp is None or ddp.rank == 0  # the rank that prints and writes
    reporter = Reporter(quiet=args.quiet or not lead)
    cfg = TrainConfig(data=args.data, split=args.split, image_root=args.image_root, resize=args.resize,
                      crop=args.crop, backbone=args.backbone, weights=args.weights, base_loss=args.base_loss,
                      bits=tuple(args.bits), adaptive=args.adaptive, distill=args.distill, beta=args.beta,
                      weight_rule=args.weight_rule, centers=args.centers, length_scale=args.length_scale,
                      faithful=args.faithful,
                      epochs=args.epochs or 20, batch_size=args.batch_size, lr=args.lr,
                      weight_decay=args.weight_decay, eval_every=args.eval_every, topk=args.topk, ties=args.ties,
                      device=args.device, seed=args.seed, workers=args.workers, out=args.out,
                      **unsupervised_options(args))
    resume = None
    if args.resume:
        resume = args.resume
        if resume == "auto":
            if not args.out:
                raise ValueError("--resume without a checkpoint path needs --out RUN_DIR (it resumes RUN_DIR/last.safetensors)")
            resume = os.path.join(args.out, "last.safetensors")
        data = None  # the checkpoint's config says which data
        if args.epochs is None:
            cfg.epochs = 0  # keep the checkpoint's
    else:
        data = load_training_data(cfg)

        def choose_out():
            if cfg.out is None:
                return _fresh_dir(os.path.join("runs", data.name if cfg.data == "digits" else
                                               os.path.splitext(os.path.basename(os.path.normpath(cfg.data)))[0]))
            if os.path.exists(os.path.join(cfg.out, "last.safetensors")) and not args.overwrite:
                raise FileExistsError(f"--out {cfg.out} already holds a run: continue it with --resume, pass "
                                      f"--overwrite to replace it, or choose another --out")
            return cfg.out

        cfg.out = choose_out() if ddp is None else ddp.on_rank0(choose_out)  # one run directory for every rank
    t0 = time.perf_counter()
    try:
        result = fit(cfg, data, reporter=reporter, resume=resume, ddp=ddp)
    except Interrupted as e:
        if lead:
            again = "nhl-fast train" if ddp is None else f"torchrun --nproc-per-node {ddp.world} -m nhl_fast train"
            print(f"\ninterrupted: resumable checkpoint saved to {e.path}\n"
                  f"continue with: {again} --resume {e.path}", file=sys.stderr)
        return INTERRUPTED
    if not lead:
        return 0
    wall = time.perf_counter() - t0
    out = result["config"]["out"]
    print(summary(result))
    print(f"\nbest epoch {result['best_epoch']}/{result['epochs']}, training {result['train_time_s']:.1f} s, "
          f"total {wall:.1f} s; run saved in {out}/ (best.safetensors, metrics.json, *.png)")
    return 0


def unsupervised_options(args) -> dict:
    """The TrainConfig fields of --unsupervised, --views, --memory, --warmup-epochs, --loss-opt."""
    if args.memory < 0 or args.warmup_epochs < 0:
        raise ValueError("--memory and --warmup-epochs must be >= 0")
    return dict(unsupervised=args.unsupervised, views=args.views, memory=args.memory,
                warmup_epochs=args.warmup_epochs, loss_opts=dict(args.loss_opt))


def _checkpoint_data(args, ckpt):
    """The data named on the command line, else the data the checkpoint was trained on."""
    from nhl_fast.app.data import load_data

    c = ckpt.config
    spec = args.data or c["data"]
    same = args.data is None
    return load_data(spec, split=args.split or (c.get("split") if same else None),
                     image_root=args.image_root or (c.get("image_root") if same else None),
                     resize=c.get("resize", args.resize) if same else args.resize,
                     crop=c.get("crop", args.crop) if same else args.crop)


def _load_model(args):
    from nhl_fast.app.checkpoint import load_checkpoint
    from nhl_fast.app.model import build_model
    from nhl_fast.app.train import resolve_device

    ckpt = load_checkpoint(args.checkpoint)
    device = resolve_device(args.device)
    model = build_model(ckpt.config).to(device)
    model.load_state_dict(ckpt.model)
    model.eval()
    return ckpt, model, device


def _check_inputs(data, ckpt) -> None:
    c = ckpt.config
    if tuple(data.input_shape) != tuple(c["input_shape"]):
        raise ValueError(f"the data's inputs have shape {tuple(data.input_shape)} but the checkpoint was trained "
                         f"on inputs of shape {tuple(c['input_shape'])}")


def cmd_eval(args) -> int:
    from nhl_fast.app.checkpoint import atomic_write_json
    from nhl_fast.app.evaluate import evaluate_model, table

    reporter = Reporter(quiet=args.quiet)
    ckpt, model, device = _load_model(args)
    data = _checkpoint_data(args, ckpt)
    _check_inputs(data, ckpt)
    if data.num_classes != ckpt.config["num_classes"]:
        reporter.info(f"note: {data.num_classes} label columns here, {ckpt.config['num_classes']} in training")
    bits = ckpt.config["bits"]
    t0 = time.perf_counter()
    res = evaluate_model(model, data, bits, topk=args.topk, ties=args.ties, device=device,
                         batch_size=args.batch_size, workers=args.workers, curves=True, radius=args.radius,
                         reporter=reporter)
    res.update(checkpoint=os.path.abspath(args.checkpoint) if not os.path.isdir(args.checkpoint) else args.checkpoint,
               data=data.describe(), seconds=time.perf_counter() - t0)
    k = "all" if args.topk is None else args.topk
    print(table(bits, {f"mAP@{k} ({args.ties})": res["map"], f"P@r{args.radius}": res["precision_at_radius"]},
                first=data.name))
    ckpt_path = args.checkpoint
    base = ckpt_path if os.path.isdir(ckpt_path) else os.path.dirname(os.path.abspath(ckpt_path))
    out = args.out or os.path.join(base, "eval.json")
    atomic_write_json(out, res)
    from nhl_fast.app import plots

    plots.pr_curves(os.path.splitext(out)[0] + "_pr_curves.png",
                    {int(b): (c["precision"], c["recall"]) for b, c in res["pr_curves"].items()})
    print(f"\n{data.describe()}; {res['seconds']:.2f} s; results in {out}")
    return 0


def cmd_encode(args) -> int:
    from safetensors.torch import save

    from nhl_fast.app.checkpoint import atomic_write_bytes
    from nhl_fast.app.evaluate import encode_split

    reporter = Reporter(quiet=args.quiet)
    ckpt, model, device = _load_model(args)
    data = _checkpoint_data(args, ckpt)
    _check_inputs(data, ckpt)
    split = getattr(data, args.which)
    t0 = time.perf_counter()
    codes, labels = encode_split(model, split, batch_size=args.batch_size, device=device,
                                 workers=args.workers, reporter=reporter, desc=f"encode {args.which}")
    meta = {"bits": ",".join(str(b) for b in ckpt.config["bits"]), "split": args.which, "data": data.name,
            "layout": "int64 words, bit j of a code = (word[j // 64] >> (j % 64)) & 1; length b = first b bits"}
    atomic_write_bytes(args.out, save({"codes": codes.contiguous(), "labels": labels.contiguous()}, metadata=meta))
    dt = time.perf_counter() - t0
    print(f"encoded {codes.shape[0]} {args.which} items of {data.name} into {args.out}: codes {tuple(codes.shape)} "
          f"int64 (bits {meta['bits']}), labels {tuple(labels.shape)}; {dt:.2f} s ({codes.shape[0] / dt:,.0f} items/s)")
    return 0


def cmd_compare(args) -> int:
    from nhl_fast.app.compare import METHODS, UNSUPERVISED_METHODS, run_compare

    allowed = METHODS + UNSUPERVISED_METHODS[len(METHODS):] if args.unsupervised else METHODS
    text = args.methods or ("independent,nhl+adaptive+distill,lsh,itq" if args.unsupervised else ",".join(METHODS))
    methods = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in methods if m not in allowed]
    if bad or not methods:
        raise ValueError(f"--methods: unknown {bad or 'empty list'}; choose from {', '.join(allowed)}")
    text = run_compare(args, methods, Reporter(quiet=args.quiet))
    print(text)
    return 0


def cmd_demo(args) -> int:
    from nhl_fast.app.demo import run

    run(n=args.n, queries=args.queries, k=args.k, backend=args.backend)
    return 0


def _bench_dir(arg) -> str:
    """--dir, else the source tree's bench/, else ./bench when it is one (it holds the harness _common.py)."""
    if arg:
        return arg
    for d in (SOURCE_BENCH, "bench"):
        if os.path.isfile(os.path.join(d, "_common.py")):
            return d
    raise CommandError("needs a source checkout (git clone of the nhl_fast repository): the benchmark scripts are "
                       "its bench/ folder, which pip does not install; run it in a clone or pass --dir PATH/TO/bench")


def _bench_command(d, script, args):
    """The script's command line, or None with the reason it is skipped here."""
    cmd = [sys.executable, os.path.join(d, script)]
    if script == "bench_gpu.py":  # CUDA only, its own flags: --dry-run is its CPU smoke test and writes nothing
        if args.quick:
            return cmd + ["--dry-run"], None
        import torch

        if args.device == "cpu" or not torch.cuda.is_available():
            return None, "needs a CUDA GPU (--quick runs its CPU dry run)"
        return cmd, None
    return cmd + (["--quick"] if args.quick else []) + (["--device", args.device] if args.device else []), None


def cmd_bench(args) -> int:
    d = _bench_dir(args.dir)
    scripts = sorted(f for f in os.listdir(d) if f.startswith("bench_") and f.endswith(".py")) \
        if os.path.isdir(d) else []
    if args.only:
        want = {w.strip().removesuffix(".py") for w in args.only.split(",")}
        missing = want - {s[:-3] for s in scripts}
        if missing:
            raise ValueError(f"--only: no benchmark script {', '.join(sorted(missing))} in {d}")
        scripts = [s for s in scripts if s[:-3] in want]
    if not scripts:
        raise CommandError(f"no benchmark scripts (bench_*.py) in {os.path.abspath(d)}")
    failed, skipped = [], []
    for s in scripts:
        cmd, why = _bench_command(d, s, args)
        if cmd is None:
            print(f"== skipped {s}: {why}", flush=True)
            skipped.append(s)
            continue
        print(f"== {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, stdout=subprocess.DEVNULL if args.quiet else None)
        print(f"   exit {rc} after {time.perf_counter() - t0:.1f} s", flush=True)
        if rc:
            failed.append(s)
    ran = len(scripts) - len(skipped)
    results = os.path.join(d, "results", "*_quick.json" if args.quick else "")
    print(f"{ran - len(failed)}/{ran} benchmarks ran; results in {results}"
          + (f"; skipped: {', '.join(skipped)}" if skipped else "")
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0

