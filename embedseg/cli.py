"""Command line: `embedseg train|evaluate|compare-grouping|tune|reproduce|table|predict|data|config` (also `python -m embedseg`)."""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

import numpy as np

log = logging.getLogger("embedseg")

ERRORS = ("A bad input (config, data, checkpoint, path) ends with one line 'embedseg <command>: error: ...' and "
          "exit status 2; --debug shows its traceback instead.")
TABLE_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "agnostic_AP")


# ----------------------------------------------------------------------------- shared steps


def evaluate_and_report(run_dir: Path, config, model, ckpt: dict, grouper_names: list[str], split: str,
                        overwrite_overlays: bool) -> dict:
    """Evaluate groupers on one split; print the table; record the scores in metrics.json (under
    "<split>[:N]" when only the first N images were scored) and per image in images_<split>.csv; draw
    the overlays (over an existing figure only with `overwrite_overlays`)."""
    from embedseg.config import spatial_embedding
    from embedseg.engine.evaluator import compare_groupers, image_scores
    from embedseg.engine.metrics_file import record_scores
    from embedseg.evaluation.tables import format_table, metric_columns
    from embedseg.outputs import write_csv
    from embedseg.viz import plot_grouping_comparison

    ev = config.eval
    results, run = compare_groupers(config, model, ckpt["class_names"], grouper_names, split, ev.max_images,
                                    metrics=ev.metrics)
    key, notes = record_scores(run_dir, config, ckpt, split, results, run)
    # beside the whole split's file, never over it: the first N images go to images_<split>_first<N>.csv
    per_image = write_csv(run_dir / f"images_{key.replace('[:', '_first').rstrip(']')}.csv", image_scores(run))
    figure = run_dir / f"overlays_{split}.png"
    if figure.exists() and not overwrite_overlays:
        notes.append(f"{figure} exists and was not redrawn (--overwrite redraws it)")
    else:
        plot_grouping_comparison(run.images, run.ground_truth, run.predictions, figure)
    figures = [figure]
    if spatial_embedding(config):
        figures.append(draw_spatial_outputs(run_dir, config, run, split, overwrite_overlays, notes))
    keys = metric_columns(results, TABLE_KEYS)  # the columns of the metrics the config asked for
    coco = (f"COCO mask AP with maxDets {ev.max_dets}, class-aware unless marked agnostic; "
            if "coco" in ev.metrics else "")
    print(f"\n{', '.join(ev.metrics)} on {split} ({len(run.names)} images); {coco}"
          f"percent, except DiC / abs_DiC (objects per image)")
    print(format_table(results, keys=keys, first="grouper"))
    timing = {n: {"group ms (median)": m["group_ms_median"], "inst/img": m["instances_per_image"]}
              for n, m in results.items()}
    print(f"\nnetwork {np.median(run.network_ms):.1f} ms/image (median); "
          + "; ".join(f"{n}: {t['group ms (median)']:.1f} ms, {t['inst/img']:.1f} instances/image"
                      for n, t in timing.items()))
    print(f"metrics: {run_dir / 'metrics.json'} (entry {key!r}), per image: {per_image}\nfigures: {', '.join(map(str, figures))}")
    for note in notes:
        print(f"note: {note}")
    return results


def draw_spatial_outputs(run_dir: Path, config, run, split: str, overwrite: bool, notes: list[str]) -> Path:
    """spatial_<split>.png: seed map and margins of a spatial embedding on the images `run` kept."""
    from embedseg.viz import plot_spatial_outputs

    figure = run_dir / f"spatial_{split}.png"
    if figure.exists() and not overwrite:
        notes.append(f"{figure} exists and was not redrawn (--overwrite redraws it)")
        return figure
    return plot_spatial_outputs(run.images, run.outputs, config.model["coord_scale"], figure)


# ----------------------------------------------------------------------------- commands


def cmd_train(args) -> int:
    from embedseg.config import load_config
    from embedseg.engine.faults import NonFiniteError, TrainingInterrupted
    from embedseg.engine.run import load_run
    from embedseg.engine.trainer import train

    config = load_config(args.config, args.set)
    run_dir = Path(args.out) if args.out else Path("runs") / config.name
    resume = " ".join(["embedseg train", shlex.quote(args.config), *(f"--set {shlex.quote(s)}" for s in args.set),
                       "--out", shlex.quote(str(run_dir)), "--resume"])
    try:
        train(config, run_dir, resume=args.resume, overwrite=args.overwrite)
    except TrainingInterrupted as e:  # SIGINT or SIGTERM: last.pt was saved after the current step
        print(f"embedseg train: {e}; continue with: {resume}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:  # a second Ctrl-C while the first one's step was finishing
        print(f"embedseg train: stopped at once; continue from the last checkpoint with: {resume}", file=sys.stderr)
        return 130
    except NonFiniteError as e:
        print(f"embedseg train: error: {e}", file=sys.stderr)
        return 2
    if args.no_eval or not is_main_process():  # under torchrun rank 0 alone evaluates (every rank has trained)
        return 0
    config, model, ckpt = load_run(run_dir)
    # the run's own figure: a resumed run redraws it
    evaluate_and_report(run_dir, config, model, ckpt, list(config.grouping), config.eval.split, overwrite_overlays=True)
    return 0


def cmd_evaluate(args) -> int:
    from embedseg.engine.run import load_run

    overrides = list(args.set)
    if args.max_images is not None:
        overrides.append(f"eval.max_images={args.max_images}")
    config, model, ckpt = load_run(args.run_dir, overrides, tuned=not args.untuned)
    names = args.grouping.split(",") if args.grouping else list(config.grouping)
    evaluate_and_report(Path(args.run_dir), config, model, ckpt, names, args.split or config.eval.split,
                        overwrite_overlays=args.overwrite)
    return 0


def cmd_compare_grouping(args) -> int:
    from embedseg.engine.evaluator import compare_groupers, format_grouping_table
    from embedseg.engine.run import load_run
    from embedseg.outputs import write_json, write_text
    from embedseg.viz import plot_ap_vs_time, plot_grouping_comparison

    run_dir = Path(args.run_dir)
    config, model, ckpt = load_run(run_dir, args.set, tuned=not args.untuned)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    split = args.split or config.eval.split
    paths = {what: run_dir / f"grouping_{split}{suffix}" for what, suffix in
             (("table", ".md"), ("json", ".json"), ("overlays", "_overlays.png"), ("ap_time", "_ap_vs_time.png"))}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not args.overwrite:  # checked before the slow part
        raise FileExistsError(f"{', '.join(existing)} already exist; use --overwrite to replace them")
    names = [n.strip() for n in args.groupers.split(",") if n.strip()] if args.groupers else None
    max_images = args.max_images if args.max_images is not None else config.eval.max_images
    results, run = compare_groupers(config, model, ckpt["class_names"], names, split, max_images,
                                    cache_dir=args.cache, overwrite_cache=args.overwrite)

    network_ms = float(np.median(run.network_ms))
    title = (f"Grouping on {split} of {run_dir} ({len(run.names)} images): COCO mask AP (percent, "
             f"maxDets {config.eval.max_dets}), instances per image, grouping time per image (network "
             f"{network_ms:.1f} ms/image, run once for all groupers)")
    table = format_grouping_table(results)
    write_text(paths["table"], f"{title}\n\n{table}\n")
    write_json(paths["json"], {"split": split, "num_images": len(run.names), "network_ms_median": network_ms,
                               "groupers": results}, indent=2)
    plot_grouping_comparison(run.images, run.ground_truth, run.predictions, paths["overlays"])
    plot_ap_vs_time(results, paths["ap_time"], title=f"{run_dir.name}, {split} ({len(run.names)} images)")
    print(f"\n{title}\n\n{table}\n")
    print("\n".join(f"{what + ':':9}{path}" for what, path in paths.items()))
    return 0


def cmd_tune(args) -> int:
    from embedseg.engine.tuning import format_tuning, tune_run

    names = [n.strip() for n in args.groupers.split(",") if n.strip()] if args.groupers else None
    results = tune_run(args.run_dir, names, args.trials, args.metric, args.overwrite, overrides=args.set)
    print(f"\n{args.metric} on the tune split of {args.run_dir}, the config's parameters and the best of "
          f"{args.trials} trials per grouper:\n\n{format_tuning(results, args.metric)}\n")
    print(f"chosen:  {Path(args.run_dir) / 'tuned.yaml'} (evaluate, compare-grouping and predict use it)\n"
          f"trials:  {Path(args.run_dir) / 'tune.json'}")
    return 0


def cmd_reproduce(args) -> int:
    from embedseg.engine.faults import TrainingInterrupted
    from embedseg.suites import load_suite
    from embedseg.suites.render import collect, format_table
    from embedseg.suites.reproduce import reproduce

    suite = load_suite(args.suite)
    again = f"embedseg reproduce {args.suite} --budget {args.budget} --seeds {args.seeds} --runs {args.runs}"
    if args.rows is not None:
        again += f" --rows {shlex.quote(args.rows)}"
    if args.skip_kept:
        again += " --skip-kept"
    try:
        reproduce(suite, args.budget, args.seeds, Path(args.runs), args.rows, args.skip_kept)
    except TrainingInterrupted as e:  # the row's last.pt was saved: the same command continues it
        print(f"embedseg reproduce: {e}; continue with: {again}", file=sys.stderr)
        return e.exit_status
    rows = collect(suite, args.budget, Path(args.runs), kept=args.skip_kept)
    print(f"\n{suite.title} ({args.budget} budget)\n\n{format_table(suite, rows)}")
    return 0


def cmd_table(args) -> int:
    from embedseg.outputs import write_text
    from embedseg.suites import load_suite, suite_names
    from embedseg.suites.render import collect, draw_figure, experiments_markdown, format_table

    runs = Path(args.runs)
    if args.all:
        out = Path(args.out)
        if out.exists() and not args.overwrite:
            raise FileExistsError(f"{out} exists; use --overwrite to replace it")
        write_text(out, experiments_markdown([load_suite(n) for n in suite_names()], args.budget, runs, out))
        print(f"{out}: {len(suite_names())} suites at the {args.budget} budget")
        return 0
    if not args.suite:
        raise ValueError("name a suite (shipped: " + ", ".join(suite_names()) + ") or use --all")
    suite = load_suite(args.suite)
    rows = collect(suite, args.budget, runs)
    print(format_table(suite, rows, args.format))
    figure = draw_figure(suite, rows, runs / suite.name / args.budget / f"{suite.name}_{args.budget}.png", args.budget)
    if figure is not None:
        print(f"figure: {figure}", file=sys.stderr)
    return 0


def cmd_predict(args) -> int:
    from embedseg.engine.prediction import check_out_folder, list_images, output_stems, write_predictions
    from embedseg.engine.run import build_groupers, build_predictor, load_run

    out = Path(args.out).resolve() if Path(args.out).is_symlink() else Path(args.out)
    check_out_folder(out, args.overwrite)  # before the slow part
    paths = list_images(args.images)
    stems = output_stems(paths)
    config, model, ckpt = load_run(args.run_dir, args.set, tuned=not args.untuned)
    name = args.grouping or next(iter(config.grouping))
    grouper = build_groupers(config, [name])[name]
    predictor = build_predictor(config, model)
    count = write_predictions(out, paths, stems, lambda image: grouper(predictor(image)), ckpt["class_names"],
                              args.overwrite)
    print(f"{len(paths)} image(s), {count} instances ({name}) -> {out}")
    return 0


def cmd_data_synth(args) -> int:
    from embedseg.data import SyntheticShapes, write_dataset

    for split in args.splits.split(","):
        count = args.num_images if split == "train" else max(1, args.num_images // 5)
        dataset = SyntheticShapes(split=split, num_images=count, size=args.size, seed=args.seed)
        folder = write_dataset(dataset, args.out, split, overwrite=args.overwrite)
        print(f"{split}: {count} images -> {folder}")
    return 0


def cmd_config_show(args) -> int:
    from embedseg.config import show_config

    print(show_config(args.config, args.set))
    return 0


def cmd_data_check(args) -> int:
    import yaml

    from embedseg.data.check import check_dataset, format_report

    params = {}
    for item in args.param:
        if "=" not in item:
            raise ValueError(f"--param {item!r}: expected KEY=VALUE, e.g. annotations=instances_{{split}}.json")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:  # e.g. "{split}/images": not YAML, meant as a plain string
            value = text
        # "{split}" parses as a YAML mapping, but dataset parameters are never mappings: keep the text
        params[key.strip()] = text if isinstance(value, dict) else value
    reports = check_dataset(args.root, args.splits.split(","), args.format, params)
    print(format_report(reports, args.root, args.format))
    return 1 if any(r.problems for r in reports) else 0


# ----------------------------------------------------------------------------- parser


def add_untuned(p) -> None:
    p.add_argument("--untuned", action="store_true",
                   help="the grouping parameters of the run's config, not those `embedseg tune` chose (tuned.yaml)")


def add_set(p) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=100 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedseg", description=__doc__, epilog=ERRORS)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of its line")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_command(sub)

    p = sub.add_parser("evaluate", help="COCO AP of a trained run on a split")
    p.add_argument("run_dir")
    p.add_argument("--grouping", help="grouper name(s), comma separated (default: all in the config)")
    p.add_argument("--split", help="split to evaluate (default: eval.split of the config)")
    p.add_argument("--max-images", type=int, help="evaluate only the first N images (stored in metrics.json "
                                                  "under '<split>[:N]', apart from the whole split's scores)")
    p.add_argument("--overwrite", action="store_true", help="redraw overlays_<split>.png when it exists")
    add_untuned(p)
    add_set(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare-grouping", help="every grouper on the same network outputs: AP and time table, figures")
    p.add_argument("run_dir")
    p.add_argument("--groupers", help="grouper names, comma separated (default: every grouper that fits the run, "
                                      "oracles left out; the config's parameters where it has a grouping block)")
    p.add_argument("--split", help="split to compare on (default: eval.split of the config)")
    p.add_argument("--max-images", type=int, help="use only the first N images")
    p.add_argument("--overwrite", action="store_true", help="replace earlier grouping_<split>.* files of this run "
                                                            "(and a --cache folder of another network pass)")
    p.add_argument("--cache", metavar="DIR", help="read the network outputs from the output cache in DIR, computing "
                                                  "and caching them there first when it lacks them, "
                                                  "so later comparisons skip the network")
    p.add_argument("--threads", type=int, help="torch CPU threads for the network and the groupers (default: "
                                               "torch's; 1 gives steadier times on a busy machine)")
    add_untuned(p)
    add_set(p)
    p.set_defaults(func=cmd_compare_grouping)

    p = sub.add_parser("predict", help="instance label PNGs, COCO results JSON and overlays for images")
    p.add_argument("run_dir")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--grouping", help="grouper name (default: the first in the config)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous prediction in --out (never "
                                                            "a folder that holds anything else)")
    add_untuned(p)
    add_set(p)
    p.set_defaults(func=cmd_predict)

    add_tune_command(sub)
    add_suite_commands(sub)

    add_data_commands(sub.add_parser("data", help="data set tools").add_subparsers(dest="data_command", required=True))
    add_config_commands(sub.add_parser("config", help="config tools").add_subparsers(dest="config_command",
                                                                                    required=True))
    return parser


def add_config_commands(config_sub) -> None:
    q = config_sub.add_parser("show", help="the resolved config, each value with its origin (file, --set or default)")
    q.add_argument("config", help="experiment YAML, e.g. experiments/dsb2018/full.yaml")
    add_set(q)
    q.set_defaults(func=cmd_config_show)


def add_train_command(sub) -> None:
    p = sub.add_parser("train", help="train a model from a YAML config, then evaluate it")
    p.add_argument("config", help="experiment YAML, e.g. experiments/quickstart.yaml")
    add_set(p)
    p.add_argument("--out", help="run directory (default runs/<config name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from checkpoints/last.pt, with the config it started with "
                        "(SIGINT or SIGTERM save last.pt and exit with status 130 or 143)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    p.set_defaults(func=cmd_train)


def add_tune_command(sub) -> None:
    p = sub.add_parser("tune", help="choose each grouper's parameters on the run's tune split (data.tune): "
                                    "tuned.yaml, which evaluate, compare-grouping and predict then use")
    p.add_argument("run_dir")
    p.add_argument("--groupers", help="grouper names, comma separated (default: every grouper that fits the "
                                      "run, oracles left out)")
    p.add_argument("--trials", type=int, default=24, help="parameter settings scored per grouper, the same for "
                                                          "every grouper (default 24)")
    p.add_argument("--metric", default="AP", help="what to maximise: AP (COCO, default), AP50, match_AP50, SBD, "
                                                  "... (abs_DiC is minimised)")
    p.add_argument("--overwrite", action="store_true", help="tune again groupers the run's tuned.yaml already holds")
    add_set(p)
    p.set_defaults(func=cmd_tune)


def add_suite_commands(sub) -> None:
    from embedseg.suites.spec import BUDGETS

    p = sub.add_parser("reproduce", help="train, tune and evaluate every unfinished row of a paper-table suite "
                                         "(experiments/<suite>/suite.yaml), then print its table")
    p.add_argument("suite", help="suite name (a folder of experiments/) or path to a suite.yaml")
    p.add_argument("--budget", default="cpu", choices=BUDGETS, help="smoke: minutes, to check the pipeline; cpu "
                                                                    "(default): the CPU configs; full: the papers'")
    p.add_argument("--seeds", type=int, default=3, help="seeds per row (default 3)")
    p.add_argument("--runs", default="runs", help="where the rows' runs go: <runs>/<suite>/<budget>/<row>/seed<k>")
    p.add_argument("--rows", help="only the rows whose name contains this text (case-insensitive), e.g. "
                                  "--rows spatial; the table still shows every row")
    p.add_argument("--skip-kept", action="store_true", help="count a (row, seed) whose result `table --all` kept in "
                                                            "experiments/<suite>/results/<budget>/ as finished")
    p.set_defaults(func=cmd_reproduce)
    p = sub.add_parser("table", help="a suite's table and figure from its finished runs; --all writes EXPERIMENTS.md")
    p.add_argument("suite", nargs="?", help="suite name or path to a suite.yaml")
    p.add_argument("--all", action="store_true", help="every shipped suite into --out (EXPERIMENTS.md), from the results "
                                                          "kept in experiments/<suite>/results/ after keeping there "
                                                          "those under --runs")
    p.add_argument("--budget", default="cpu", choices=BUDGETS)
    p.add_argument("--format", default="md", help="md (default), csv or tex")
    p.add_argument("--runs", default="runs", help="the runs folder `reproduce` wrote (default runs)")
    p.add_argument("--out", default="EXPERIMENTS.md", help="with --all: the file to write (default EXPERIMENTS.md)")
    p.add_argument("--overwrite", action="store_true", help="with --all: replace --out")
    p.set_defaults(func=cmd_table)


def add_data_commands(data_sub) -> None:
    q = data_sub.add_parser("synth", help="write the synthetic data set as image/mask folders")
    q.add_argument("--out", required=True, help="root folder; writes <out>/<split>/{images,masks,semantic}")
    q.add_argument("--splits", default="train,val", help="comma separated splits (default train,val)")
    q.add_argument("--num-images", type=int, default=200, help="train images (other splits get a fifth)")
    q.add_argument("--size", type=int, default=128, help="image side in pixels")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--overwrite", action="store_true")
    q.set_defaults(func=cmd_data_synth)
    q = data_sub.add_parser("check", help="counts, sizes, instances per image and every problem of a data set "
                                          "(exit status 1 when there are problems)")
    q.add_argument("root", help="data set root (relative: looked up under $EMBEDSEG_DATA, then here)")
    q.add_argument("--splits", default="train,val", help="comma separated splits (default train,val)")
    q.add_argument("--format", default="folder", help="dataset name: folder (default), coco, cityscapes, ...")
    q.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset parameter (YAML value), e.g. --param annotations=instances_{split}.json")
    q.set_defaults(func=cmd_data_check)


def is_main_process() -> bool:
    """Whether this is the only process, or rank 0 of a torchrun launch."""
    return os.environ.get("RANK", "0") == "0"


def exit_on_sigterm(signum, frame) -> None:
    """SIGTERM ends a command the way Ctrl-C does, by unwinding: `with` blocks and `finally` clauses run, so
    temporary folders (tune's cached outputs) are removed. Training saves last.pt first (StopSignals)."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    if threading.current_thread() is not threading.main_thread():  # only the main thread may handle signals
        return run_command(argv)
    previous = signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        return run_command(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_command(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    # under torchrun the other ranks report warnings and errors only
    info = logging.INFO if is_main_process() else logging.WARNING
    logging.basicConfig(level=logging.DEBUG if args.verbose else info,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from embedseg.config import ConfigError

    try:
        return args.func(args)
    except (ConfigError, FileExistsError, FileNotFoundError, ValueError, KeyError) as e:
        if args.debug:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        command = " ".join(filter(None, (args.command, getattr(args, "data_command", None),
                                         getattr(args, "config_command", None))))
        print(f"embedseg {command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
